//! Keeps `include/cyphonic_plugin.h` in sync with the Rust definitions: every numeric
//! `#define` against the Rust constants (both directions), and every struct's size,
//! alignment and field offsets/sizes as a C compiler sees them (a generated C program,
//! compiled with `cc` and run) against `size_of`/`offset_of!`. Each check is also run on
//! a deliberately broken copy of the header to show it can fail.
//!
//! Not built for Windows: the test runs the platform's C compiler, which a Windows
//! build under Wine does not have. The header uses only fixed-width types, `size_t` and
//! pointers, whose sizes x86-64 Windows shares with x86-64 Linux.
#![cfg(not(windows))]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cyphonic_plugin_abi::__private::{StructLayout, c_constants, c_layout};
use cyphonic_plugin_abi::ENTRY_SYMBOL;

const HEADER: &str = include_str!("../include/cyphonic_plugin.h");

#[test]
fn header_constants_match_rust() {
    assert_eq!(constant_mismatches(HEADER), Vec::<String>::new());
    let symbol = format!("#define CYPHONIC_PLUGIN_ENTRY_SYMBOL \"{ENTRY_SYMBOL}\"");
    assert!(HEADER.contains(&symbol), "header lacks `{symbol}`");
    assert!(
        HEADER.contains(&format!("*{ENTRY_SYMBOL}(void);")),
        "header does not declare the entry point"
    );
}

#[test]
fn constant_check_catches_a_wrong_value_and_a_missing_define() {
    let wrong = HEADER.replace(
        "CYPHONIC_STATUS_AUTH_FAILED (-4)",
        "CYPHONIC_STATUS_AUTH_FAILED (-5)",
    );
    assert_eq!(
        constant_mismatches(&wrong),
        ["CYPHONIC_STATUS_AUTH_FAILED: header -5, rust -4"]
    );
    let missing = HEADER.replace("#define CYPHONIC_HINT_ROUTES_CHANGED 2\n", "");
    assert_eq!(
        constant_mismatches(&missing),
        ["CYPHONIC_HINT_ROUTES_CHANGED: missing from the header"]
    );
    let extra = HEADER.replace(
        "#define CYPHONIC_NONCE_LEN 12",
        "#define CYPHONIC_NONCE_LEN 12\n#define CYPHONIC_TAG_LEN 16",
    );
    assert_eq!(
        constant_mismatches(&extra),
        ["CYPHONIC_TAG_LEN: header 16, missing from rust"]
    );
}

#[test]
fn header_layout_matches_rust() {
    let header = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/cyphonic_plugin.h");
    let c = c_report(&header, "real");
    assert_eq!(report_mismatches(&c), Vec::<String>::new());

    // The C compiler sees every struct Rust knows, and the header defines no other.
    let rust: Vec<_> = c_layout().iter().map(|s| s.c_name.to_owned()).collect();
    let mut in_header: Vec<_> = HEADER
        .lines()
        .filter_map(|l| l.strip_prefix("typedef struct "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    in_header.sort();
    let mut rust_sorted = rust.clone();
    rust_sorted.sort();
    assert_eq!(in_header, rust_sorted);
}

#[test]
fn layout_check_catches_swapped_fields() {
    let broken = HEADER.replace(
        "    size_t buf_cap;\n    size_t len;\n    int32_t status;",
        "    size_t len;\n    size_t buf_cap;\n    int32_t status;",
    );
    assert_ne!(broken, HEADER);
    let path = tmp_dir("broken").join("cyphonic_plugin.h");
    std::fs::write(&path, broken).expect("write header copy");
    let mismatches = report_mismatches(&c_report(&path, "broken"));
    assert!(
        mismatches
            .iter()
            .any(|m| m.starts_with("cyphonic_crypto_op.len")),
        "{mismatches:?}"
    );
    assert!(
        mismatches
            .iter()
            .any(|m| m.starts_with("cyphonic_crypto_op.buf_cap")),
        "{mismatches:?}"
    );
}

/// Differences between the header's numeric `#define`s and the Rust constants.
fn constant_mismatches(header: &str) -> Vec<String> {
    let in_header: BTreeMap<String, i64> = header
        .lines()
        .filter_map(|l| l.strip_prefix("#define CYPHONIC_"))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((format!("CYPHONIC_{name}"), parse_c_int(value.trim())?))
        })
        .collect();
    let rust: BTreeMap<String, i64> = c_constants().into_iter().collect();
    let mut out = Vec::new();
    for (name, value) in &rust {
        match in_header.get(name) {
            None => out.push(format!("{name}: missing from the header")),
            Some(h) if h != value => out.push(format!("{name}: header {h}, rust {value}")),
            Some(_) => {}
        }
    }
    for (name, value) in &in_header {
        if !rust.contains_key(name) {
            out.push(format!("{name}: header {value}, missing from rust"));
        }
    }
    out
}

/// `12`, `(-4)`, `0x48595043u`; `None` for non-integers (strings, include guards).
fn parse_c_int(text: &str) -> Option<i64> {
    let text = text.trim_start_matches('(').trim_end_matches(')');
    let text = text.trim_end_matches(['u', 'U', 'l', 'L']);
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let value = match digits.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok()?,
        None => digits.parse().ok()?,
    };
    Some(if negative { -value } else { value })
}

/// Compiles and runs a C program that prints, for the header at `header`, every constant
/// Rust knows and the size/alignment/offsets of every struct Rust knows. Returns its
/// output as `key value` lines.
fn c_report(header: &Path, tag: &str) -> BTreeMap<String, i64> {
    let mut src = format!(
        "#include \"{}\"\n#include <stdio.h>\n#include <stdalign.h>\n\nint main(void) {{\n",
        header.display()
    );
    for (name, _) in c_constants() {
        src += &format!("    printf(\"{name} %lld\\n\", (long long)({name}));\n");
    }
    for s in c_layout() {
        let t = s.c_name;
        src += &format!("    printf(\"{t}.sizeof %zu\\n\", sizeof({t}));\n");
        src += &format!("    printf(\"{t}.alignof %zu\\n\", alignof({t}));\n");
        for (f, _, _) in &s.fields {
            src += &format!("    printf(\"{t}.{f}.offset %zu\\n\", offsetof({t}, {f}));\n");
            src += &format!("    printf(\"{t}.{f}.size %zu\\n\", sizeof((({t} *)0)->{f}));\n");
        }
    }
    src += "    return 0;\n}\n";

    let dir = tmp_dir(tag);
    let c_file = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&c_file, src).expect("write C source");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o"])
        .arg(&exe)
        .arg(&c_file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(
        out.status.success(),
        "C compile failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().expect("run the layout program");
    assert!(run.status.success());
    String::from_utf8(run.stdout)
        .expect("ASCII output")
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("key value");
            (k.to_owned(), v.parse().expect("integer"))
        })
        .collect()
}

/// Differences between the C program's report and Rust's constants and layouts.
fn report_mismatches(c: &BTreeMap<String, i64>) -> Vec<String> {
    let mut expected: Vec<(String, i64)> = c_constants();
    for StructLayout {
        c_name,
        size,
        align,
        fields,
    } in c_layout()
    {
        expected.push((format!("{c_name}.sizeof"), size as i64));
        expected.push((format!("{c_name}.alignof"), align as i64));
        for (f, offset, size) in fields {
            expected.push((format!("{c_name}.{f}.offset"), offset as i64));
            expected.push((format!("{c_name}.{f}.size"), size as i64));
        }
    }
    expected
        .into_iter()
        .filter_map(|(k, rust)| match c.get(&k) {
            Some(&cv) if cv == rust => None,
            Some(&cv) => Some(format!("{k}: C {cv}, rust {rust}")),
            None => Some(format!("{k}: not reported by C")),
        })
        .collect()
}

fn tmp_dir(tag: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("c-header-{tag}"));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
