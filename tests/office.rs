//! Office membership from the command line: keys, peer ids, tokens,
//! revocation, checked with the verifier every node uses.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use swarmcc_protocol::token::{OfficePublicKey, RevocationList, Token, TokenError};

fn out(c: &mut Command) -> String {
    String::from_utf8(run_ok(c).stdout)
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn office_tokens_from_the_cli_verify_and_bind_to_peer_ids() {
    let t = tempfile::tempdir().unwrap();
    let office = t.path().join("office");
    let pk: OfficePublicKey = out(Command::new(swarmcc())
        .args(["office", "init", "--name", "acme", "--dir"])
        .arg(&office))
    .parse()
    .unwrap();
    let key = office.join("office.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A second init never overwrites the key.
    assert!(!Command::new(swarmcc())
        .args(["office", "init", "--name", "acme", "--dir"])
        .arg(&office)
        .status()
        .unwrap()
        .success());

    // Peer ids: stable per state dir, different between machines.
    let node = |dir: &str| {
        out(Command::new(swarmcc())
            .args(["node", "id"])
            .env("SWARMCC_DIR", t.path().join(dir)))
    };
    let (a, b) = (node("a"), node("b"));
    assert_eq!(a, node("a"));
    assert_ne!(a, b);

    let issue = |args: &[&str]| -> Token {
        out(Command::new(swarmcc())
            .args(["token"])
            .args(args)
            .arg("--office-key")
            .arg(&key))
        .parse()
        .unwrap()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tok = issue(&[
        "builder",
        "--peer",
        &a,
        "--coordinator",
        "--valid-for",
        "2d",
    ]);
    assert!(tok.verify_builder(&pk, "acme", now, None, &a).is_ok());
    assert!(matches!(
        tok.verify_builder(&pk, "acme", now, None, &b),
        Err(TokenError::WrongPeer { .. })
    ));
    assert_eq!(
        tok.verify(&pk, "acme", now + 3 * 86_400, None),
        Err(TokenError::Expired)
    );
    assert!(matches!(
        tok.verify(&pk, "other", now, None),
        Err(TokenError::WrongOffice { .. })
    ));
    let client = issue(&["client", "--user", "ann"]);
    assert_eq!(client.verify_client(&pk, "acme", now, None).unwrap(), "ann");
    // A peer id that is not one is refused.
    assert!(!Command::new(swarmcc())
        .args(["token", "builder", "--peer", "nope", "--office-key"])
        .arg(&key)
        .status()
        .unwrap()
        .success());

    // Revocation: inspect shows the id, the office signs a list naming it.
    let shown = out(Command::new(swarmcc()).args(["token", "inspect", &tok.to_string()]));
    let id = shown
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(id, tok.id_hex());
    let list: RevocationList = out(Command::new(swarmcc())
        .args(["office", "revoke", "--office-key"])
        .arg(&key)
        .arg(&id))
    .parse()
    .unwrap();
    list.verify(&pk, "acme").unwrap();
    assert_eq!(
        tok.verify(&pk, "acme", now, Some(&list)),
        Err(TokenError::Revoked)
    );
    assert!(client.verify(&pk, "acme", now, Some(&list)).is_ok());
}
