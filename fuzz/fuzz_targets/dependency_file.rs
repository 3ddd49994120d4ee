#![no_main]
// The `dependency_file` decoder of `swarmcc::decoders`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmcc::decoders::run("dependency_file", data));
