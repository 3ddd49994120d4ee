#![no_main]
// The `control` decoder of `swarmcc::decoders`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmcc::decoders::run("control", data));
