#![no_main]
// The `toolchain_archive` decoder of `swarmcc::decoders`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmcc::decoders::run("toolchain_archive", data));
