#![no_main]
// The `toolchain_stream` decoder of `swarmcc::decoders`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmcc::decoders::run("toolchain_stream", data));
