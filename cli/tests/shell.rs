//! `read`, `tail` and `append` as a shell user runs them (the real binary): appends
//! from standard input, reads as JSON lines, a live tail fed by another process, and
//! a durable consumer killed mid-stream and restarted, which skips nothing and
//! repeats nothing it acknowledged.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

use common::{database_url, unique_schema};

fn command(schema: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dcb-store"));
    command
        .args(args)
        .args(["--schema", schema])
        .env("DATABASE_URL", database_url())
        .stderr(Stdio::null());
    command
}

/// `append` with `lines` on standard input; its output lines.
fn append(schema: &str, lines: &[String], concurrency: usize) -> Vec<serde_json::Value> {
    let mut child = command(
        schema,
        &["append", "--concurrency", &concurrency.to_string()],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("start append");
    let mut stdin = child.stdin.take().expect("stdin");
    for line in lines {
        writeln!(stdin, "{line}").expect("write a line");
    }
    drop(stdin);
    let output = child.wait_with_output().expect("append ends");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn positions(output: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(output)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["position"].as_u64().expect("a position")
        })
        .collect()
}

/// Lines of a running child's output, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

fn position_of(line: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    v["position"].as_u64().expect("a position")
}

#[test]
fn append_read_and_tail_from_a_shell() {
    let schema = unique_schema("shell");
    let lines = vec![
        r#"{"type":"A","tags":["c:1"],"data":{"n":1}}"#.to_owned(),
        r#"{"type":"B","tags":["c:1"],"data":{"n":2},"metadata":{"by":"me"}}"#.to_owned(),
        r#"{"events":[{"type":"A"},{"type":"B"}],"condition":{"query":[{"types":["A"]}],"after":0}}"#
            .to_owned(),
        r#"{"type":"A","condition":{"query":[{"tags":["c:1"]}]}}"#.to_owned(),
        "not json".to_owned(),
    ];
    let out = append(&schema, &lines, 1);
    assert_eq!(out[0]["first_position"], 1);
    assert_eq!(out[1]["last_position"], 2);
    assert_eq!(out[2]["kind"], "condition_failed");
    assert_eq!(out[3]["kind"], "condition_failed");
    assert_eq!(out[4]["kind"], "invalid_input");

    let read = command(&schema, &["read", "--tags", "c:1"])
        .output()
        .unwrap();
    assert!(read.status.success());
    assert_eq!(positions(&read.stdout), vec![1, 2]);
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(text.contains(r#""metadata":{"by": "me"}"#), "{text}");

    let tail = command(&schema, &["tail", "--types", "B", "--exit-at-head"])
        .output()
        .unwrap();
    assert_eq!(positions(&tail.stdout), vec![2]);

    // Live: a following tail prints what another process appends.
    let mut follower = command(&schema, &["tail", "--types", "Live"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let printed = lines_of(&mut follower);
    std::thread::sleep(Duration::from_millis(500));
    let live: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"type":"Live","data":{{"i":{i}}}}}"#))
        .collect();
    append(&schema, &live, 5);
    let got: Vec<u64> = (0..5)
        .map(|_| {
            position_of(
                &printed
                    .recv_timeout(Duration::from_secs(10))
                    .expect("live line"),
            )
        })
        .collect();
    let _ = follower.kill();
    assert_eq!(got, vec![3, 4, 5, 6, 7]);
}

#[test]
fn a_consumer_killed_mid_stream_resumes_without_skipping() {
    let schema = unique_schema("killed");
    let total = 3_000u64;
    let lines: Vec<String> = (0..total)
        .map(|i| format!(r#"{{"type":"E","tags":["k"],"data":{{"i":{i}}}}}"#))
        .collect();
    let out = append(&schema, &lines, 64);
    assert!(out.iter().all(|o| o.get("error").is_none()));

    let tail = |extra: &[&str]| {
        let mut args = vec!["tail", "--consumer", "shell-consumer", "--batch-size", "50"];
        args.extend_from_slice(extra);
        command(&schema, &args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = tail(&[]);
    let printed = lines_of(&mut first);
    let mut seen_first = Vec::new();
    while seen_first.len() < 1_200 {
        let line = printed
            .recv_timeout(Duration::from_secs(20))
            .expect("a line");
        seen_first.push(position_of(&line));
    }
    first.kill().expect("kill -9 the consumer"); // SIGKILL: no clean shutdown
    first.wait().unwrap();
    while let Ok(line) = printed.recv_timeout(Duration::from_millis(200)) {
        seen_first.push(position_of(&line));
    }

    let second = tail(&["--exit-at-head"]).wait_with_output().unwrap();
    assert!(second.status.success());
    let seen_second = positions(&second.stdout);
    let resumed_at = seen_second[0];
    assert!(
        resumed_at >= 1_000,
        "it resumed near where it was killed, at {resumed_at}"
    );
    assert!(
        resumed_at <= *seen_first.last().unwrap() + 1,
        "nothing unacknowledged was skipped"
    );
    assert_eq!(seen_second, (resumed_at..=total).collect::<Vec<_>>());
    let mut all: Vec<u64> = seen_first.iter().chain(&seen_second).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (1..=total).collect::<Vec<_>>());

    // The checkpoint is where the second run stopped: a third run prints nothing old.
    let mut third = tail(&[]);
    let more = lines_of(&mut third);
    assert!(
        more.recv_timeout(Duration::from_secs(1)).is_err(),
        "nothing acknowledged again"
    );
    let _ = third.kill();
}

#[test]
fn json_at_serde_jsons_limits_goes_in_and_comes_out_and_beyond_is_refused() {
    let schema = unique_schema("shell_edges");
    let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let lines = vec![
        format!(r#"{{"type":"Edge","data":{}}}"#, nested(127)),
        format!(
            r#"{{"type":"Edge","data":{{"n":1e308}},"metadata":{{"m":{}}}}}"#,
            nested(126)
        ),
        format!(r#"{{"type":"Edge","data":{}}}"#, nested(128)),
        r#"{"type":"Edge","data":{"n":1e309}}"#.to_owned(),
        format!(
            r#"{{"type":"Edge","data":{{}},"metadata":{{"m":{}}}}}"#,
            nested(127)
        ),
    ];
    let out = append(&schema, &lines, 1);
    assert_eq!(out[0]["first_position"], 1);
    assert_eq!(out[1]["first_position"], 2);
    for refused in &out[2..] {
        assert_eq!(refused["kind"], "invalid_input", "{refused}");
    }
    let read = command(&schema, &["read", "--types", "Edge"])
        .output()
        .unwrap();
    assert!(read.status.success());
    let text = String::from_utf8_lossy(&read.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains(&nested(127)), "{}", lines[0]);
    assert!(
        lines[1].contains(&format!("1{}", "0".repeat(308))),
        "{}",
        lines[1]
    );
}
