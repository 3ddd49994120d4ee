#![no_main]
// The `sccache_run_job` decoder of `swarmcc::decoders`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmcc::decoders::run("sccache_run_job", data));
