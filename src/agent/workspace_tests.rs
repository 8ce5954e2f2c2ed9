//! The helper's ops in temporary directories. Escapes are tried through symlinks to `/etc` only
//! by ops that cannot change it when they fail to refuse (reads, and a removal of a name that
//! does not exist there); writes are aimed at a directory beside the root instead.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::*;

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir(&root).expect("root");
        std::fs::create_dir(&outside).expect("outside");
        std::fs::write(outside.join("secret"), b"outside").expect("secret");
        Tree {
            _dir: dir,
            root,
            outside,
        }
    }

    fn root(&self) -> &str {
        self.root.to_str().expect("utf-8")
    }

    fn put(&self, rel: &str, data: &[u8], max: u64) -> Result<u64> {
        put(self.root(), rel, 0o640, max, &mut &data[..])
    }

    fn get(&self, rel: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        get(self.root(), rel, &mut out).map(|()| out)
    }

    /// Symlinks in the root: `etc` → /etc, `out` → the directory beside the root (absolute),
    /// and the chain `c1` → `c2` → `../outside` (relative).
    fn with_links(self) -> Tree {
        symlink("/etc", self.root.join("etc")).expect("etc link");
        symlink(&self.outside, self.root.join("out")).expect("out link");
        symlink("c2", self.root.join("c1")).expect("c1");
        symlink("../outside", self.root.join("c2")).expect("c2");
        symlink(self.outside.join("secret"), self.root.join("secret-link")).expect("file link");
        self
    }
}

fn code<T: std::fmt::Debug>(result: Result<T>) -> &'static str {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(e) => e.code(),
    }
}

fn file_body(got: &[u8]) -> (GetHeader, &[u8]) {
    let newline = got.iter().position(|b| *b == b'\n').expect("header line");
    let header = serde_json::from_slice(&got[..newline]).expect("header");
    (header, &got[newline + 1..])
}

fn listing(tree: &Tree, rel: &str) -> (Vec<Entry>, bool) {
    match file_body(&tree.get(rel).expect("listing")) {
        (GetHeader::Dir { entries, truncated }, rest) => {
            assert!(rest.is_empty());
            (entries, truncated)
        }
        other => panic!("expected a listing, got {other:?}"),
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn put_then_get_round_trips() {
    let tree = Tree::new();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(
        tree.put("a/b/./c.bin", &data, 1 << 20).expect("put"),
        300_000
    );
    let meta = std::fs::metadata(tree.root.join("a/b/c.bin")).expect("written");
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    let got = tree.get("a//b/c.bin").expect("get");
    let (header, body) = file_body(&got);
    assert_eq!(header, GetHeader::File { size: 300_000 });
    assert_eq!(body, &data[..]);

    // A rewrite replaces the content; no temporary file is left beside it.
    tree.put("a/b/c.bin", b"short", 1 << 20).expect("rewrite");
    assert_eq!(file_body(&tree.get("a/b/c.bin").expect("get")).1, b"short");
    assert_eq!(names_in(&tree.root.join("a/b")), ["c.bin"]);

    let (entries, truncated) = listing(&tree, "a/b");
    assert!(!truncated);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "c.bin");
    assert_eq!(entries[0].kind, EntryKind::File);
    assert_eq!((entries[0].size, entries[0].mode), (5, 0o640));
    assert!(entries[0].modified_ms > 1_600_000_000_000);
    let (root_entries, _) = listing(&tree, "");
    assert_eq!(root_entries[0].kind, EntryKind::Dir);
}

#[test]
fn wrong_kinds_and_missing_paths() {
    let tree = Tree::new();
    tree.put("f", b"x", 10).expect("put");
    std::fs::create_dir(tree.root.join("d")).expect("mkdir");
    assert_eq!(code(tree.put("d", b"x", 10)), "is_a_directory");
    assert_eq!(code(tree.put("", b"x", 10)), "is_a_directory");
    assert_eq!(code(tree.get("nope")), "not_found");
    assert_eq!(code(tree.get("f/x")), "not_a_directory");
    assert_eq!(code(tree.put("f/x", b"x", 10)), "not_a_directory");
    assert_eq!(code(resolve(tree.root(), "f", false)), "not_a_directory");
    assert_eq!(code(resolve(tree.root(), "missing", false)), "not_found");
    assert_eq!(code(remove(tree.root(), "nope")), "not_found");
    assert_eq!(
        code(get("/no/such/workspace", "", &mut Vec::new())),
        "not_found"
    );
}

#[test]
fn bad_paths_are_refused_before_anything_happens() {
    let tree = Tree::new();
    for rel in [
        "..",
        "../outside/secret",
        "a/../../outside",
        "/etc/passwd",
        "a\0b",
    ] {
        assert_eq!(code(tree.get(rel)), "bad_path", "get {rel:?}");
        assert_eq!(code(tree.put(rel, b"x", 10)), "bad_path", "put {rel:?}");
        assert_eq!(code(remove(tree.root(), rel)), "bad_path", "rm {rel:?}");
        assert_eq!(
            code(resolve(tree.root(), rel, true)),
            "bad_path",
            "resolve {rel:?}"
        );
    }
    assert_eq!(code(tree.get(&"a/".repeat(3000))), "bad_path");
    assert_eq!(code(get("relative/root", "", &mut Vec::new())), "bad_path");
    assert_eq!(names_in(&tree.outside), ["secret"]);
    assert!(names_in(&tree.root).is_empty());
}

#[test]
fn symlinks_out_of_the_root_are_refused() {
    let tree = Tree::new().with_links();
    for rel in [
        "etc",
        "etc/hostname",
        "out",
        "out/secret",
        "c1",
        "c1/secret",
        "secret-link",
    ] {
        assert_eq!(code(tree.get(rel)), "path_escapes", "get {rel:?}");
    }
    for rel in ["etc", "etc/ssl", "out", "c1", "c2"] {
        assert_eq!(
            code(resolve(tree.root(), rel, false)),
            "path_escapes",
            "resolve {rel:?}"
        );
    }
    for rel in ["out/new", "c1/new", "c1/deeper/new"] {
        assert_eq!(
            code(resolve(tree.root(), rel, true)),
            "path_escapes",
            "resolve {rel:?}"
        );
        assert_eq!(code(tree.put(rel, b"x", 10)), "path_escapes", "put {rel:?}");
    }
    assert_eq!(
        code(tree.put("secret-link", b"clobbered", 100)),
        "path_escapes"
    );
    assert_eq!(
        code(remove(tree.root(), "etc/mc-no-such-file")),
        "path_escapes"
    );
    assert_eq!(code(remove(tree.root(), "out/secret")), "path_escapes");
    assert_eq!(code(remove(tree.root(), "c1/secret")), "path_escapes");
    assert_eq!(names_in(&tree.outside), ["secret"]);
    assert_eq!(
        std::fs::read(tree.outside.join("secret")).expect("secret"),
        b"outside"
    );
}

#[test]
fn symlinks_inside_the_root_are_followed() {
    let tree = Tree::new();
    tree.put("real/file", b"inside", 100).expect("put");
    symlink("real", tree.root.join("alias")).expect("alias");
    symlink("../real", tree.root.join("real/up")).expect("up");
    assert_eq!(
        file_body(&tree.get("alias/file").expect("get")).1,
        b"inside"
    );
    assert_eq!(
        file_body(&tree.get("real/up/up/file").expect("get")).1,
        b"inside"
    );
    let resolved = resolve(tree.root(), "alias/sub", true).expect("resolve");
    assert_eq!(
        resolved,
        tree.root.canonicalize().expect("root").join("real/sub")
    );
    let (entries, _) = listing(&tree, "");
    let alias = entries.iter().find(|e| e.name == "alias").expect("alias");
    assert_eq!(alias.kind, EntryKind::Symlink);
}

#[test]
fn rm_takes_the_link_not_its_target() {
    let tree = Tree::new().with_links();
    remove(tree.root(), "out").expect("rm out");
    remove(tree.root(), "secret-link").expect("rm secret-link");
    tree.put("keep/file", b"kept", 100).expect("put");
    symlink("keep", tree.root.join("keep-link")).expect("keep-link");
    remove(tree.root(), "keep-link").expect("rm keep-link");
    assert_eq!(names_in(&tree.outside), ["secret"]);
    assert_eq!(names_in(&tree.root.join("keep")), ["file"]);
    assert!(!tree.root.join("out").exists() && !tree.root.join("keep-link").exists());

    // A directory goes with everything in it, links included but not what they point to.
    tree.put("keep/deep/er/file", b"x", 10).expect("put");
    symlink(&tree.outside, tree.root.join("keep/deep/out")).expect("link");
    remove(tree.root(), "keep").expect("rm keep");
    assert!(!tree.root.join("keep").exists());
    assert_eq!(names_in(&tree.outside), ["secret"]);
}

#[test]
fn the_root_itself_cannot_be_removed() {
    let tree = Tree::new();
    tree.put("file", b"x", 10).expect("put");
    for rel in ["", ".", "./", ".//."] {
        assert_eq!(code(remove(tree.root(), rel)), "bad_path", "rm {rel:?}");
    }
    assert_eq!(names_in(&tree.root), ["file"]);
}

#[test]
fn the_cap_keeps_nothing_past_it() {
    let tree = Tree::new();
    tree.put("target", b"original", 100).expect("put");
    let data = vec![7u8; 1000];
    assert_eq!(
        tree.put("target", &data, 1000).expect("exactly the cap"),
        1000
    );
    tree.put("target", b"original", 100).expect("put");
    assert_eq!(
        code(put(tree.root(), "target", 0o600, 999, &mut &data[..])),
        "too_large"
    );
    assert_eq!(code(tree.put("new/file", &data, 999)), "too_large");
    assert_eq!(
        std::fs::read(tree.root.join("target")).expect("target"),
        b"original"
    );
    // Neither temporary file is left; the parent made for the refused file may stay.
    assert_eq!(names_in(&tree.root), ["new", "target"]);
    assert!(names_in(&tree.root.join("new")).is_empty());
}

#[test]
fn resolve_makes_the_root_and_its_parents() {
    let tree = Tree::new();
    let root = tree.root.join("ws");
    let root = root.to_str().expect("utf-8");
    assert_eq!(code(resolve(root, "a", false)), "not_found");
    let made = resolve(root, "a/b/c", true).expect("resolve");
    assert!(made.is_dir());
    assert_eq!(
        made,
        tree.root.canonicalize().expect("canon").join("ws/a/b/c")
    );
    assert_eq!(
        resolve(root, "", false).expect("root"),
        tree.root.canonicalize().expect("c").join("ws")
    );
}

#[test]
fn the_command_line() {
    let tree = Tree::new();
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut out = Vec::new();
    run(
        &args(&["put", tree.root(), "x/y", "644", "100"]),
        &mut &b"hello"[..],
        &mut out,
    )
    .expect("put");
    assert_eq!(out, b"{\"size\":5}\n");
    let mode = std::fs::metadata(tree.root.join("x/y"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    let mut out = Vec::new();
    run(
        &args(&["resolve", tree.root(), "x", "--create"]),
        &mut &b""[..],
        &mut out,
    )
    .expect("resolve");
    assert!(
        String::from_utf8(out)
            .expect("utf-8")
            .ends_with("/root/x\n")
    );
    for bad in [
        &["put", tree.root(), "z", "999", "100"][..],
        &["put", tree.root(), "z", "644", "-1"],
        &["get", tree.root()],
        &["format", tree.root(), "x"],
    ] {
        assert!(
            run(&args(bad), &mut &b""[..], &mut Vec::new()).is_err(),
            "{bad:?}"
        );
    }
    assert!(!tree.root.join("z").exists());
}
