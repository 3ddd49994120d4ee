#![no_main]
// The `cache_entry` decoder of `swarmcc::decoders`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmcc::decoders::run("cache_entry", data));
