#![no_main]
// The `file_info` decoder of `swarmcc::decoders`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmcc::decoders::run("file_info", data));
