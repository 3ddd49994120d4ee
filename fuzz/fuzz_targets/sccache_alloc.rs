#![no_main]
// The `sccache_alloc` decoder of `swarmcc::decoders`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmcc::decoders::run("sccache_alloc", data));
