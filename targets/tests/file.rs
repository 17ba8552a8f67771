//! The file server over real loopback sockets and real files in temporary directories.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{Encoder, Framed};

use chopstick_targets::file::{self, Config, TEMP_PREFIX};
use chopstick_targets::server::{Counters, Handle, ServerError};
use chopstick_targets::wire::{FrameLayout, HjsonCodec, HjsonFrame};
use common::DEADLINE;

/// Client-side codec limit: above anything the server may send.
const CLIENT_MAX: usize = 64 * 1024 * 1024;

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn start_with(config: Config) -> (Handle, Arc<Counters>) {
    let counters = config.common.counters.clone();
    let handle = Handle::spawn(common::listener(), move |listener, shutdown| {
        file::run(listener, config, shutdown)
    })
    .expect("spawn file server");
    (handle, counters)
}

fn start(root: &Path) -> (Handle, Arc<Counters>) {
    start_with(Config::new(root))
}

struct Client(Framed<TcpStream, HjsonCodec>);

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client(Framed::new(
            common::connect(addr).await,
            HjsonCodec::new(CLIENT_MAX),
        ))
    }

    async fn call(&mut self, header: Value, body: impl Into<Bytes>) -> HjsonFrame {
        let send = self.0.send(HjsonFrame::new(header, body));
        tokio::time::timeout(DEADLINE, send)
            .await
            .expect("send timed out")
            .expect("send");
        let reply = tokio::time::timeout(DEADLINE, self.0.next())
            .await
            .expect("reply timed out");
        reply
            .expect("server closed the connection")
            .expect("bad reply frame")
    }

    async fn put(&mut self, name: &str, body: &[u8]) -> HjsonFrame {
        let header = json!({"op": "put", "name": name, "sha256": sha(body)});
        self.call(header, Bytes::copy_from_slice(body)).await
    }

    async fn get(&mut self, name: &str) -> HjsonFrame {
        self.call(json!({"op": "get", "name": name}), Bytes::new())
            .await
    }

    async fn delete(&mut self, name: &str) -> HjsonFrame {
        self.call(json!({"op": "delete", "name": name}), Bytes::new())
            .await
    }

    async fn list(&mut self) -> Vec<(String, u64, String)> {
        let reply = ok(self.call(json!({"op": "list"}), Bytes::new()).await);
        let files = reply.header["files"]
            .as_array()
            .expect("`files` is an array");
        files
            .iter()
            .map(|f| {
                let name = f["name"].as_str().expect("name").to_owned();
                let bytes = f["bytes"].as_u64().expect("bytes");
                let sha256 = f["sha256"].as_str().expect("sha256").to_owned();
                (name, bytes, sha256)
            })
            .collect()
    }

    /// Proves the connection still works after whatever came before.
    async fn assert_usable(&mut self) {
        self.list().await;
    }
}

/// Asserts a success reply and returns it.
#[track_caller]
fn ok(reply: HjsonFrame) -> HjsonFrame {
    assert_eq!(
        reply.header["ok"],
        json!(true),
        "expected success, got {:?}",
        reply.header
    );
    reply
}

/// Asserts an error reply with an empty body and returns its reason.
#[track_caller]
fn refused(reply: &HjsonFrame) -> String {
    assert_eq!(
        reply.header["ok"],
        json!(false),
        "expected a refusal, got {:?}",
        reply.header
    );
    assert!(reply.body.is_empty(), "an error reply has no body");
    let reason = reply.header["error"].as_str().expect("`error` is a string");
    assert!(!reason.is_empty(), "an error reply says why");
    reason.to_owned()
}

/// Asserts `get name` returns exactly `want`, with its hash.
async fn assert_content(client: &mut Client, name: &str, want: &[u8]) {
    let reply = ok(client.get(name).await);
    assert_eq!(reply.body.len(), want.len(), "{name}: length");
    assert!(reply.body == want, "{name}: content differs");
    assert_eq!(reply.header["sha256"], json!(sha(want)), "{name}: sha256");
}

/// One request as raw bytes, with the layout `disconnect_matrix` cuts by.
fn encode(header: Value, body: &[u8]) -> (Vec<u8>, FrameLayout) {
    let mut buf = BytesMut::new();
    HjsonCodec::new(CLIENT_MAX)
        .encode(
            HjsonFrame::new(header, Bytes::copy_from_slice(body)),
            &mut buf,
        )
        .unwrap();
    let body_start = buf.len() - body.len();
    let layout = FrameLayout {
        start: 0,
        length_field: 0..4,
        body: body_start..buf.len(),
        end: buf.len(),
    };
    (buf.to_vec(), layout)
}

fn put_request(name: &str, body: &[u8]) -> (Vec<u8>, FrameLayout) {
    encode(
        json!({"op": "put", "name": name, "sha256": sha(body)}),
        body,
    )
}

/// Every path under `dir` (not following symlinks) and what it is: a file's hash, a
/// directory, or a symlink's target. Two equal snapshots = nothing changed.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                walk(&path, out);
                "dir".into()
            } else {
                sha(&std::fs::read(&path).unwrap())
            };
            out.insert(path, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

/// Temporary files of the server anywhere under `root`.
fn temp_files(root: &Path) -> Vec<PathBuf> {
    snapshot(root)
        .into_keys()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(TEMP_PREFIX))
        })
        .collect()
}

#[tokio::test]
async fn put_get_list_delete_round_trips_including_empty_large_nested_and_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start(dir.path());
    let mut c = Client::connect(server.addr).await;

    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let files: [(&str, &[u8]); 3] = [
        ("empty", b""),
        ("big.bin", &big),
        ("a/b/c.txt", b"nested file\n"),
    ];
    for (name, body) in files {
        let reply = ok(c.put(name, body).await);
        assert_eq!(
            reply.header["sha256"],
            json!(sha(body)),
            "{name}: put echoes the hash"
        );
        assert!(reply.body.is_empty());
        assert_content(&mut c, name, body).await;
    }
    assert_eq!(
        std::fs::read(dir.path().join("a/b/c.txt")).unwrap(),
        b"nested file\n",
        "a real file on disk"
    );

    let mut want: Vec<_> = files
        .iter()
        .map(|(n, b)| (n.to_string(), b.len() as u64, sha(b)))
        .collect();
    want.sort();
    assert_eq!(
        c.list().await,
        want,
        "list: sorted, recursive, '/'-separated"
    );

    ok(c.put("a/b/c.txt", b"second version").await);
    assert_content(&mut c, "a/b/c.txt", b"second version").await;

    for (name, _) in files {
        ok(c.delete(name).await);
        refused(&c.get(name).await);
    }
    assert_eq!(c.list().await, vec![]);
    assert!(temp_files(dir.path()).is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn get_and_delete_of_missing_file_are_refused_and_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let (server, counters) = start(dir.path());
    let mut c = Client::connect(server.addr).await;
    let reason = refused(&c.get("nope.txt").await);
    assert!(reason.contains("no such file"), "{reason}");
    let reason = refused(&c.delete("nope/deeper.txt").await);
    assert!(reason.contains("no such file"), "{reason}");
    ok(c.put("now.txt", b"here").await);
    assert_content(&mut c, "now.txt", b"here").await;
    assert_eq!(
        counters.snapshot().aborted,
        0,
        "a refusal does not end the connection"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_requests_are_refused_and_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let (server, counters) = start(dir.path());
    let mut c = Client::connect(server.addr).await;
    let cases = [
        (json!({}), &b""[..], "missing `op`"),
        (json!({"op": 7}), b"", "`op` must be a string"),
        (json!({"op": "rename", "name": "x"}), b"", "unknown op"),
        (json!({"op": "get"}), b"", "missing `name`"),
        (
            json!({"op": "get", "name": 5}),
            b"",
            "`name` must be a string",
        ),
        (json!({"op": "get", "name": "x"}), b"body", "takes no body"),
        (json!({"op": "put", "name": "x"}), b"body", "needs `sha256`"),
        (
            json!({"op": "put", "name": "x", "sha256": "zz"}),
            b"body",
            "64 hex digits",
        ),
        (
            json!({"op": "put", "name": "x", "sha256": sha(b"body")[..62]}),
            b"body",
            "64 hex digits",
        ),
    ];
    for (header, body, want) in cases {
        let reason = refused(&c.call(header.clone(), Bytes::from_static(body)).await);
        assert!(
            reason.contains(want),
            "{header}: {reason:?} should mention {want:?}"
        );
    }
    c.assert_usable().await;
    assert_eq!(snapshot(dir.path()), BTreeMap::new(), "nothing was created");
    assert_eq!(counters.snapshot().aborted, 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_written_one_byte_at_a_time_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start(dir.path());
    let mut s = common::connect(server.addr).await;
    let (put, _) = put_request("slow/one.txt", b"byte by byte");
    let (get, _) = encode(json!({"op": "get", "name": "slow/one.txt"}), b"");
    common::write_bytewise(&mut s, &[put, get].concat()).await;
    let replies = common::read_frames(&mut s, HjsonCodec::new(CLIENT_MAX), 2).await;
    assert_eq!(
        replies[0].header["ok"],
        json!(true),
        "{:?}",
        replies[0].header
    );
    assert_eq!(replies[1].header["sha256"], json!(sha(b"byte by byte")));
    assert_eq!(&replies[1].body[..], b"byte by byte");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn coalesced_requests_in_one_write_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (server, counters) = start(dir.path());
    let mut s = common::connect(server.addr).await;
    let requests = [
        put_request("one", b"first").0,
        put_request("two", b"second").0,
        encode(json!({"op": "get", "name": "one"}), b"").0,
        encode(json!({"op": "delete", "name": "one"}), b"").0,
        encode(json!({"op": "get", "name": "one"}), b"").0,
        encode(json!({"op": "list"}), b"").0,
    ];
    s.write_all(&requests.concat()).await.unwrap();
    let r = common::read_frames(&mut s, HjsonCodec::new(CLIENT_MAX), requests.len()).await;
    assert_eq!(r[0].header["sha256"], json!(sha(b"first")));
    assert_eq!(r[1].header["sha256"], json!(sha(b"second")));
    assert_eq!(&r[2].body[..], b"first");
    assert_eq!(r[3].header["ok"], json!(true));
    assert_eq!(r[4].header["ok"], json!(false), "deleted before this get");
    assert_eq!(
        r[5].header["files"],
        json!([{"name": "two", "bytes": 6, "sha256": sha(b"second")}])
    );
    let c = counters.snapshot();
    assert_eq!((c.frames_in, c.frames_out), (6, 6));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn interrupted_put_over_existing_file_keeps_old_content() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (server, counters) = start(&root);
    let old = b"old version, still here".to_vec();
    ok(Client::connect(server.addr)
        .await
        .put("keep/me.txt", &old)
        .await);

    let new: Vec<u8> = vec![b'N'; 64 * 1024];
    let (request, layout) = put_request("keep/me.txt", &new);
    common::disconnect_matrix(server.addr, &counters, &request, &layout, || {
        let (root, old) = (root.clone(), old.clone());
        async move {
            let mut c = Client::connect(server.addr).await;
            assert_content(&mut c, "keep/me.txt", &old).await;
            assert_eq!(
                temp_files(&root),
                Vec::<PathBuf>::new(),
                "no temp file left"
            );
        }
    })
    .await;
    assert_eq!(std::fs::read(root.join("keep/me.txt")).unwrap(), old);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn interrupted_put_of_new_name_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (server, counters) = start(&root);
    let (request, layout) = put_request("fresh/dir/new.bin", &[7u8; 10_000]);
    common::disconnect_matrix(server.addr, &counters, &request, &layout, || {
        let root = root.clone();
        async move {
            let mut c = Client::connect(server.addr).await;
            refused(&c.get("fresh/dir/new.bin").await);
            assert_eq!(c.list().await, vec![]);
            assert_eq!(
                snapshot(&root),
                BTreeMap::new(),
                "no file, directory or temp file"
            );
        }
    })
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn complete_put_then_reset_is_whole_or_absent() {
    let dir = tempfile::tempdir().unwrap();
    let (server, counters) = start(dir.path());
    let old = b"old".to_vec();
    ok(Client::connect(server.addr).await.put("f", &old).await);
    let new: Vec<u8> = (0..2 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    for _ in 0..5 {
        counters
            .wait_until(DEADLINE, |c| c.active == 0)
            .await
            .expect("quiet server");
        let mut s = common::connect(server.addr).await;
        s.write_all(&put_request("f", &new).0).await.unwrap();
        common::reset(s);
        counters
            .wait_until(DEADLINE, |c| c.active == 0)
            .await
            .expect("connection handled");
        let got = ok(Client::connect(server.addr).await.get("f").await);
        assert!(
            got.body == old || got.body == new,
            "a put is whole or absent, got {} bytes",
            got.body.len()
        );
        assert!(temp_files(dir.path()).is_empty());
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_sha256_is_rejected_and_old_content_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = start(dir.path());
    let mut c = Client::connect(server.addr).await;
    ok(c.put("doc.txt", b"original").await);
    let before = snapshot(dir.path());

    let lie = json!({"op": "put", "name": "doc.txt", "sha256": sha(b"something else")});
    let reason = refused(&c.call(lie, Bytes::from_static(b"replacement")).await);
    assert!(reason.contains("sha256 mismatch"), "{reason}");
    let lie = json!({"op": "put", "name": "new/dir/x", "sha256": sha(b"something else")});
    refused(&c.call(lie, Bytes::from_static(b"replacement")).await);

    assert_content(&mut c, "doc.txt", b"original").await;
    assert_eq!(
        snapshot(dir.path()),
        before,
        "no temp file, no new directory, nothing changed"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn huge_header_length_closes_connection_and_counts_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let (server, counters) = start(dir.path());
    let mut s = common::connect(server.addr).await;
    s.write_all(&[0xFF; 4]).await.unwrap();
    let (_, _) = common::read_to_end_or_error(&mut s).await;
    counters
        .wait_until(DEADLINE, |c| c.errors.get("too_large") == Some(&1))
        .await
        .unwrap_or_else(|c| panic!("too_large not counted: {c:?}"));
    assert!(!server.is_finished(), "the server survives a bad peer");
    Client::connect(server.addr).await.assert_usable().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bodies_over_max_frame_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("large"), vec![0u8; 4096]).unwrap();
    let mut config = Config::new(dir.path());
    config.common.max_frame = Some(1024);
    let (server, counters) = start_with(config);

    // A reply that would exceed the limit is refused; the connection stays.
    let mut c = Client::connect(server.addr).await;
    let reason = refused(&c.get("large").await);
    assert!(reason.contains("largest frame"), "{reason}");
    c.assert_usable().await;

    // A request over the limit is a corrupt stream: closed before its body is read.
    let mut s = common::connect(server.addr).await;
    s.write_all(&put_request("x", &[1u8; 2048]).0)
        .await
        .unwrap();
    common::read_to_end_or_error(&mut s).await;
    counters
        .wait_until(DEADLINE, |c| c.errors.get("too_large") == Some(&1))
        .await
        .unwrap_or_else(|c| panic!("too_large not counted: {c:?}"));
    assert!(!dir.path().join("x").exists());
    c.assert_usable().await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn escape_attempts_are_refused_for_put_get_and_delete() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let sibling = base.path().join("sibling");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&sibling).unwrap();
    std::fs::write(sibling.join("secret.txt"), b"outside the root").unwrap();
    std::fs::write(base.path().join("x"), b"in the parent").unwrap();
    std::fs::write(root.join(".hidden"), b"operator's dot-file").unwrap();
    std::fs::write(root.join("inside.txt"), b"fine").unwrap();
    std::fs::create_dir(root.join("a")).unwrap();
    // Symlinks planted inside the root: to a directory outside, to /tmp, to a file outside.
    std::os::unix::fs::symlink(&sibling, root.join("evil")).unwrap();
    std::os::unix::fs::symlink(std::env::temp_dir(), root.join("evil_tmp")).unwrap();
    std::os::unix::fs::symlink(sibling.join("secret.txt"), root.join("link")).unwrap();
    std::os::unix::fs::symlink(&sibling, root.join("a/up")).unwrap();
    let probe = format!("chopstick-escape-probe-{}", std::process::id());
    let before = snapshot(base.path());

    let long = "c".repeat(300);
    let tmp_probe = format!("evil_tmp/{probe}");
    let names: Vec<&str> = vec![
        "../x",
        "../../etc/passwd",
        "/etc/passwd",
        "a/../../x",
        "a/./b",
        ".",
        "..",
        "",
        "a//b",
        "a\\..\\x",
        "a\u{0}b",
        "foo/",
        "~/x",
        "%2e%2e/x",
        &long,
        "evil",
        "evil/x",
        "evil/secret.txt",
        &tmp_probe,
        "link",
        "a/up/secret.txt",
        "a/up",
        ".hidden",
        "a/.hidden",
        "../sibling/secret.txt",
        "root/../../x",
    ];
    let (server, counters) = start(&root);
    let mut c = Client::connect(server.addr).await;
    for name in &names {
        let reason = refused(&c.put(name, b"escaped!").await);
        assert!(
            !reason.contains(&*base.path().to_string_lossy()),
            "put {name:?}: server path leaked: {reason}"
        );
        let get = c.get(name).await;
        assert!(get.body.is_empty(), "get {name:?} returned data");
        refused(&get);
        refused(&c.delete(name).await);
    }
    let reason = refused(&c.put("evil/x", b"escaped!").await);
    assert!(reason.contains("symlink"), "{reason}");

    assert_eq!(
        snapshot(base.path()),
        before,
        "nothing changed inside or outside the root"
    );
    assert!(
        !std::env::temp_dir().join(&probe).exists(),
        "nothing written through the /tmp symlink"
    );
    let listed: Vec<String> = c.list().await.into_iter().map(|(n, _, _)| n).collect();
    assert_eq!(
        listed,
        ["inside.txt"],
        "list shows no symlink, dot-file or outside file"
    );
    assert_eq!(
        counters.snapshot().aborted,
        0,
        "every refusal kept the connection"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn stale_temp_files_are_swept_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join(format!("{TEMP_PREFIX}0123.tmp")), b"half").unwrap();
    std::fs::write(
        root.join(format!("sub/deeper/{TEMP_PREFIX}abcd.tmp")),
        b"half",
    )
    .unwrap();
    std::fs::write(root.join(".keep"), b"not ours").unwrap();
    std::fs::write(root.join("sub/real.txt"), b"real").unwrap();
    let (server, _) = start(root);
    // The sweep runs before the first accept, so a served request means it is done.
    let listed = Client::connect(server.addr).await.list().await;
    assert_eq!(listed, [("sub/real.txt".to_string(), 4, sha(b"real"))]);
    assert!(temp_files(root).is_empty());
    assert!(
        root.join(".keep").exists(),
        "only the server's own temp files are swept"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn run_refuses_non_loopback_listener() {
    let dir = tempfile::tempdir().unwrap();
    let listener = chopstick_targets::server::bind("0.0.0.0:0".parse().unwrap(), 16).unwrap();
    let run = file::run(
        listener,
        Config::new(dir.path()),
        futures::future::pending(),
    );
    let result = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("run returned");
    assert!(
        matches!(result, Err(ServerError::NotLoopback { server: "file", .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn run_refuses_missing_or_non_directory_root() {
    let dir = tempfile::tempdir().unwrap();
    let not_dir = dir.path().join("plain");
    std::fs::write(&not_dir, b"").unwrap();
    for root in [dir.path().join("missing"), not_dir] {
        let run = file::run(
            common::listener(),
            Config::new(&root),
            futures::future::pending(),
        );
        let result = tokio::time::timeout(DEADLINE, run)
            .await
            .expect("run returned");
        assert!(
            matches!(result, Err(ServerError::Config(_))),
            "{}: {result:?}",
            root.display()
        );
    }
}
