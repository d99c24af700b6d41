//! The Synapse harness itself (tests/support/synapse.rs): a homeserver starts, users are
//! created, rooms carry messages and media, and the two rate-limit modes behave as the
//! Matrix tests expect.

mod support;

use std::time::Instant;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::synapse::{self, RegisteredUser, Synapse, SynapseOptions, encode};

/// `creator` makes a private room and invites `guest`, who joins. Returns the room ID.
async fn shared_room(
    synapse: &Synapse,
    creator: &RegisteredUser,
    guest: &RegisteredUser,
) -> String {
    let request = json!({"preset": "private_chat", "invite": [guest.user_id]});
    let (status, body) = synapse
        .call(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(&creator.access_token),
            Some(&request),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "createRoom: {body}");
    let room_id = body["room_id"].as_str().expect("room_id").to_owned();

    let path = format!("/_matrix/client/v3/rooms/{}/join", encode(&room_id));
    let (status, body) = synapse
        .call(
            Method::POST,
            &path,
            Some(&guest.access_token),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "join: {body}");
    room_id
}

async fn send_text(
    synapse: &Synapse,
    sender: &RegisteredUser,
    room_id: &str,
    txn_id: &str,
    text: &str,
) -> (StatusCode, Value) {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
        encode(room_id),
        encode(txn_id)
    );
    let content = json!({"msgtype": "m.text", "body": text});
    synapse
        .call(
            Method::PUT,
            &path,
            Some(&sender.access_token),
            Some(&content),
        )
        .await
}

/// The bodies of the room's latest `m.room.message` events, newest first.
async fn latest_bodies(synapse: &Synapse, reader: &RegisteredUser, room_id: &str) -> Vec<String> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
        encode(room_id)
    );
    let (status, body) = synapse
        .call(Method::GET, &path, Some(&reader.access_token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "messages: {body}");
    body["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|event| event["type"] == "m.room.message")
        .map(|event| event["content"]["body"].as_str().expect("body").to_owned())
        .collect()
}

#[tokio::test]
async fn synapse_starts_registers_users_and_carries_messages_and_media() {
    let started = Instant::now();
    let synapse = synapse::start(SynapseOptions::default()).await;
    eprintln!("Synapse answered after {:?}", started.elapsed());
    assert_eq!(synapse.server_name, "localhost");

    let alice = synapse.register("alice", "alice-password", true).await;
    let bob = synapse.register("bob", "bob-password", false).await;
    assert_eq!(alice.user_id, "@alice:localhost");
    assert_eq!(bob.user_id, "@bob:localhost");
    assert!(!bob.access_token.is_empty() && !bob.device_id.is_empty());

    // The registered password logs in too (the bot logs in that way).
    let login = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "bob"},
        "password": "bob-password",
    });
    let (status, body) = synapse
        .call(Method::POST, "/_matrix/client/v3/login", None, Some(&login))
        .await;
    assert_eq!(status, StatusCode::OK, "login: {body}");
    assert_eq!(body["user_id"], "@bob:localhost");

    let room_id = shared_room(&synapse, &alice, &bob).await;
    assert!(room_id.starts_with('!'), "{room_id}");
    let text = "hello from alice: ünïcode, <b>markup</b> & 100% / ?";
    let (status, body) = send_text(&synapse, &alice, &room_id, "txn-1", text).await;
    assert_eq!(status, StatusCode::OK, "send: {body}");
    assert!(
        body["event_id"]
            .as_str()
            .is_some_and(|id| id.starts_with('$')),
        "{body}"
    );
    assert_eq!(
        latest_bodies(&synapse, &bob, &room_id)
            .await
            .first()
            .map(String::as_str),
        Some(text)
    );

    // Media: a client uploads, another downloads through authenticated media.
    let image = b"\x89PNG\r\n\x1a\n not really a picture".to_vec();
    let upload: Value = synapse
        .http()
        .post(synapse.url("/_matrix/media/v3/upload?filename=picture.png"))
        .bearer_auth(&alice.access_token)
        .header("content-type", "image/png")
        .body(image.clone())
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("upload answer");
    let content_uri = upload["content_uri"].as_str().expect("content_uri");
    let media = content_uri.strip_prefix("mxc://").expect("an mxc URI");
    let download = synapse.url(&format!("/_matrix/client/v1/media/download/{media}"));
    let response = synapse
        .http()
        .get(&download)
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.bytes().await.expect("media bytes").as_ref(),
        image.as_slice()
    );
    let anonymous = synapse
        .http()
        .get(&download)
        .send()
        .await
        .expect("download");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn default_rate_limits_reject_the_eleventh_rapid_event() {
    let synapse = synapse::start(SynapseOptions {
        default_rate_limits: true,
    })
    .await;
    let admin = synapse.register("admin", "admin-password", true).await;
    let user = synapse.register("user", "user-password", false).await;
    let room_id = shared_room(&synapse, &admin, &user).await;

    // rc_message defaults to a burst of 10 events at 0.2/s, and every event a client
    // sends counts, membership too: the join took one, so the 10th message is refused.
    let mut statuses = Vec::new();
    let mut rejection = Value::Null;
    for i in 1..=12 {
        let (status, body) = send_text(
            &synapse,
            &user,
            &room_id,
            &format!("t{i}"),
            &format!("message {i}"),
        )
        .await;
        if status != StatusCode::OK && rejection.is_null() {
            rejection = body;
        }
        statuses.push(status.as_u16());
    }
    let expected = [[200; 9].as_slice(), &[429; 3]].concat();
    assert_eq!(statuses, expected, "first rejection: {rejection}");
    assert_eq!(rejection["errcode"], "M_LIMIT_EXCEEDED", "{rejection}");
    assert!(
        rejection["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0),
        "{rejection}"
    );

    // An admin can exempt one user.
    synapse
        .override_ratelimit(&admin.access_token, &user.user_id)
        .await;
    for i in 13..=30 {
        let (status, body) = send_text(&synapse, &user, &room_id, &format!("t{i}"), "exempt").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "message {i} after override_ratelimit: {body}"
        );
    }
}

#[tokio::test]
async fn relaxed_rate_limits_let_thirty_rapid_messages_through() {
    let synapse = synapse::start(SynapseOptions::default()).await;
    let alice = synapse.register("alice", "alice-password", false).await;
    let bob = synapse.register("bob", "bob-password", false).await;
    let room_id = shared_room(&synapse, &alice, &bob).await;
    for i in 1..=30 {
        let (status, body) = send_text(
            &synapse,
            &bob,
            &room_id,
            &format!("t{i}"),
            &format!("message {i}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "message {i}: {body}");
    }
    let bodies = latest_bodies(&synapse, &alice, &room_id).await;
    assert_eq!(bodies.first().map(String::as_str), Some("message 30"));
    assert_eq!(bodies.len(), 30);
}
