//! The dependency rule of `src/lib.rs`'s layout map (top to bottom, from the API down to the
//! store): a top-level module may use only the modules below it in the map. This reads every
//! `crate::<module>` path in `src/` (outside comments) and fails on one that points up the list,
//! naming the file and line.

use std::path::{Path, PathBuf};

/// The layout map's module column, top to bottom, as `lib.rs` lists it.
fn layout() -> Vec<String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("src/lib.rs");
    let modules: Vec<String> = lib
        .lines()
        .filter_map(|line| line.strip_prefix("//! | `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_string)
        .collect();
    assert!(
        modules.len() > 10,
        "the layout map in src/lib.rs lists too few modules: {modules:?}"
    );
    modules
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for `lib.rs`, `main.rs`, `bin/`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_string())
}

/// Every `crate::<name>` in the code of `text` (not in comments), with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((number + 1, name));
            }
            rest = after;
        }
    }
    found
}

/// The offending paths of one file: (line, the module it calls) for each call up the map.
fn upward(file_module: &str, text: &str, layout: &[String]) -> Vec<(usize, String)> {
    let rank = |m: &str| layout.iter().position(|x| x == m);
    let Some(own) = rank(file_module) else {
        return Vec::new();
    };
    crate_paths(text)
        .into_iter()
        .filter(|(_, called)| called != file_module)
        .filter(|(_, called)| rank(called).is_some_and(|r| r < own))
        .collect()
}

#[test]
fn every_module_of_src_is_in_the_layout_map() {
    let layout = layout();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut missing: Vec<String> = files
        .iter()
        .filter_map(|f| module_of(&src, f))
        .filter(|m| !layout.contains(m))
        .collect();
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "modules missing from the layout map in src/lib.rs: {missing:?}"
    );
}

#[test]
fn no_module_imports_one_above_it_in_the_layout_map() {
    let layout = layout();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read");
        for (line, called) in upward(&module, &text, &layout) {
            violations.push(format!(
                "{}:{line}: `{module}` calls `{called}`, which is above it in the layout map",
                file.strip_prefix(root()).unwrap_or(file).display()
            ));
        }
    }
    assert!(violations.is_empty(), "\n{}", violations.join("\n"));
}

#[test]
fn the_check_sees_a_call_up_the_map() {
    let layout: Vec<String> = ["api", "model", "store"].map(String::from).to_vec();
    let text = "use crate::model::User;\nuse crate::api::ApiError; // a call up\n// crate::api in a comment\n";
    assert_eq!(
        upward("store", text, &layout),
        vec![(1, "model".to_string()), (2, "api".to_string())]
    );
    assert!(upward("api", text, &layout).is_empty());
}
