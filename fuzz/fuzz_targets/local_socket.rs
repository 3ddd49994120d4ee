#![no_main]
// The `local_socket` decoder of `swarmcc::decoders`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmcc::decoders::run("local_socket", data));
