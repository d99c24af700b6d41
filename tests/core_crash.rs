//! Crash safety with real processes: the core is SIGKILLed mid-answer and restarted on the
//! same sled store. No user turn is lost, nothing is charged twice, the interrupted message
//! says so, and the store still opens and works. A second process on the same store is
//! refused with a clear message.

mod support;

use std::process::Stdio;
use std::time::Duration;

use poe_relay::fake_poe::{FakePoe, Scenario};
use serde_json::{Value, json};
use support::KEY;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const LAB: &str = env!("CARGO_BIN_EXE_poe-relay-lab");

struct Lab {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

fn spawn(store: &std::path::Path, poe_url: &str, existing: Option<&std::path::Path>) -> Child {
    let mut command = Command::new(LAB);
    command
        .args([
            "serve",
            "--store",
            store.to_str().unwrap(),
            "--poe-url",
            poe_url,
            "--model",
            "slow",
        ])
        .env("POE_API_KEY", KEY)
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = existing {
        command.args(["--existing", path.to_str().unwrap()]);
    }
    command.spawn().expect("cannot start poe-relay-lab")
}

impl Lab {
    fn start(store: &std::path::Path, poe_url: &str, existing: Option<&std::path::Path>) -> Lab {
        let mut child = spawn(store, poe_url, existing);
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Lab {
            child,
            stdin,
            lines,
        }
    }

    async fn send(&mut self, value: Value) {
        self.stdin
            .write_all(format!("{value}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Reads lines until `stop` says so; returns them all.
    async fn read_until(&mut self, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no output for 30 s; so far: {seen:#?}"))
                .unwrap()
                .unwrap_or_else(|| panic!("the lab exited; so far: {seen:#?}"));
            let value: Value =
                serde_json::from_str(&line).unwrap_or_else(|err| panic!("{err}: {line}"));
            let done = stop(&value);
            seen.push(value);
            if done {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn a_sigkill_mid_answer_loses_nothing_and_charges_nothing_twice() {
    let fake = FakePoe::start(KEY).await.unwrap();
    fake.script(
        "slow",
        Scenario::Text {
            text: "tick ".repeat(400),
            chunk_chars: 5,
            interval: Duration::from_millis(20),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");

    let mut first = Lab::start(&store, &fake.base_url(), None);
    first.read_until(|line| line["ready"] == true).await;
    first
        .send(json!({"channel": "c1", "user": "ann", "text": "first question", "event": "e1"}))
        .await;
    let mut shown: Vec<(String, String)> = Vec::new();
    let mut edits = 0;
    while edits < 3 {
        let line = first
            .read_until(|line| line["call"] == "edit" || line["call"] == "send")
            .await
            .pop()
            .unwrap();
        if line["accepted"] != true {
            continue;
        }
        let id = line["message"].as_str().unwrap().to_owned();
        let text = line["text"].as_str().unwrap().to_owned();
        match shown.iter_mut().find(|(known, _)| *known == id) {
            Some(entry) => entry.1 = text,
            None => shown.push((id, text)),
        }
        if line["call"] == "edit" {
            edits += 1;
        }
    }
    first.child.start_kill().unwrap(); // SIGKILL
    first.child.wait().await.unwrap();
    assert_eq!(fake.chat_requests("slow").len(), 1);

    // The platform still shows what the killed process sent.
    let existing = dir.path().join("existing.jsonl");
    let lines: Vec<String> = shown
        .iter()
        .map(|(id, text)| json!({"channel": "c1", "message": id, "text": text}).to_string())
        .collect();
    std::fs::write(&existing, lines.join("\n")).unwrap();
    let (last_id, last_text) = shown.last().unwrap().clone();

    let mut second = Lab::start(&store, &fake.base_url(), Some(&existing));
    let startup = second.read_until(|line| line["ready"] == true).await;
    assert_eq!(startup.last().unwrap()["recovered"], 1);
    let notice = startup
        .iter()
        .find(|line| line["call"] == "edit" && line["message"] == last_id.as_str())
        .unwrap_or_else(|| panic!("no final edit of the interrupted message: {startup:#?}"));
    assert_eq!(notice["accepted"], true);
    let edited = notice["text"].as_str().unwrap();
    assert!(
        edited.starts_with(&last_text),
        "the partial text was not kept: {edited}"
    );
    assert!(edited.contains("interrupted"), "{edited}");

    // A second process on the same store is refused, clearly.
    let third = spawn(&store, &fake.base_url(), None)
        .wait_with_output()
        .await
        .unwrap();
    assert!(!third.status.success());
    let said = String::from_utf8_lossy(&third.stderr);
    assert!(said.contains("in use by another process"), "{said}");

    // The conversation goes on with its history intact.
    fake.script("slow", Scenario::Echo);
    second
        .send(json!({"channel": "c1", "user": "ann", "text": "second question", "event": "e2"}))
        .await;
    second
        .read_until(|line| line["accepted"] == true && line["text"] == "second question")
        .await;
    let query = fake.chat_requests("slow")[1].body["query"].clone();
    let contents: Vec<&str> = query
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    // The question survives, and so does what the chat showed of the interrupted answer
    // (so that continue and later turns see it).
    assert_eq!(contents.len(), 3, "{contents:?}");
    assert_eq!(
        contents[0], "first question",
        "the first user turn was lost"
    );
    assert!(
        contents[1].starts_with("tick"),
        "the interrupted answer's partial text is not in the history: {contents:?}"
    );
    assert_eq!(contents[2], "second question");

    tokio::time::sleep(Duration::from_millis(300)).await;
    second.send(json!({"dump": true})).await;
    let dump = second
        .read_until(|line| line.get("dump").is_some())
        .await
        .pop()
        .unwrap();
    let dump = &dump["dump"];
    assert_eq!(dump["inflight"], 0);
    let ledger = dump["ledger"].as_array().unwrap();
    assert_eq!(ledger.len(), 2, "{ledger:#?}");
    assert_eq!(ledger[0]["state"], "Released");
    assert_eq!(
        ledger[0]["charge"], 0,
        "the interrupted answer is not charged"
    );
    assert_eq!(ledger[1]["state"], "Settled");
    let turns: Vec<&str> = dump["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(turns.len(), 4, "{turns:?}");
    assert_eq!(turns[0], "first question");
    assert!(turns[1].starts_with("tick"), "{turns:?}");
    assert_eq!(turns[2..], ["second question", "second question"]);
    drop(second.stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), second.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
