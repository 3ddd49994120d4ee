//! The kept fuzz corpus (`fuzz/corpus/<target>/`, grown by `cargo +nightly
//! fuzz run`) replayed on stable: every input that ever found a new path in
//! a decoder of outside bytes is decoded again by the test command, so a
//! change that makes one of them panic fails here, without a nightly
//! toolchain or a fuzzer.

use std::path::Path;

#[test]
fn every_decoder_takes_its_whole_kept_corpus_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut total = 0;
    for (name, decode) in swarmcc::decoders::ALL {
        let dir = root.join(name);
        let inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("no corpus for {name} in {}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(!inputs.is_empty(), "the corpus of {name} is empty");
        for input in &inputs {
            let data = match std::fs::read(input) {
                Ok(data) => data,
                // A fuzzer running on the corpus meanwhile replaces the
                // inputs it reduces.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{}: {e}", input.display()),
            };
            decode(&data);
            total += 1;
        }
    }
    // Every fuzz target has its decoder here, and the other way round.
    let targets: Vec<String> = std::fs::read_dir(root.parent().unwrap().join("fuzz_targets"))
        .unwrap()
        .flatten()
        .filter_map(|e| Some(e.path().file_stem()?.to_str()?.to_string()))
        .collect();
    let mut names: Vec<&str> = swarmcc::decoders::ALL.iter().map(|(n, _)| *n).collect();
    let mut targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    names.sort();
    targets.sort();
    assert_eq!(names, targets);
    eprintln!("replayed {total} kept inputs");
}
