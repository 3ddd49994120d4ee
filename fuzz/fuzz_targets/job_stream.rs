#![no_main]
// The `job_stream` decoder of `swarmcc::decoders`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| swarmcc::decoders::run("job_stream", data));
