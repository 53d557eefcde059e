//! The demo as a user runs it (the real binary): it rides through a server restart,
//! and two demos deciding on one schema both check the invariants over everything
//! stored and pass.

use dcb_store_testkit::ServerControls;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dcb_store::EmbeddedPostgres;

mod common;

use common::{database_url, unique_schema};

/// `dcb-store demo` with a small world against `url`.
fn demo(url: &str, schema: &str, seconds: u64) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_dcb-store"))
        .args([
            "demo",
            "--deciders",
            "16",
            "--seconds",
            &seconds.to_string(),
        ])
        .args(["--courses", "200", "--capacity", "30", "--students", "3000"])
        .args(["--schema", schema])
        .env("DATABASE_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo")
}

fn passed(what: &str, output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!(
        "{what}:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed: {stdout}");
    assert!(stdout.contains("invariants: PASS"), "{what}: {stdout}");
    stdout
}

#[test]
fn the_demo_rides_through_a_server_restart() {
    let server = Arc::new(EmbeddedPostgres::start().expect("start a throwaway server"));
    let child = demo(&server.url(), "demo_restart", 8);
    std::thread::sleep(Duration::from_secs(3));
    server.restart().expect("restart the server");
    let output = child.wait_with_output().expect("the demo ends");
    let stdout = passed("demo through a restart", &output);
    assert!(stdout.contains("errors: "), "{stdout}");
}

#[test]
fn two_demos_on_one_schema_both_pass() {
    let url = database_url();
    let schema = unique_schema("two_demos");
    let (a, b) = (demo(&url, &schema, 4), demo(&url, &schema, 4));
    let (a, b) = (
        a.wait_with_output().expect("demo a ends"),
        b.wait_with_output().expect("demo b ends"),
    );
    passed("demo a", &a);
    passed("demo b", &b);
}
