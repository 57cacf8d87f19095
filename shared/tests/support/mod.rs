//! Property-test support shared by every crate's parser properties (the
//! other crates include this file with `#[path]`, so there is one copy).
//!
//! - [`config`]: a fixed seed, so CI runs the same cases every time, and no
//!   regression files: a failure found here becomes a named regression test
//!   beside the code it fixes.
//! - [`arb_json`], [`arb_mutation`] and [`mutate`]: structure-aware
//!   mutations of a valid document (replace a node with another type, drop
//!   or add a member, nest deeply, make huge), and [`arb_byte_edit`] for
//!   byte-level damage (truncation, stray or non-UTF-8 bytes).
//! - [`assert_clear_error`]: what every refusal must look like.

#![allow(dead_code)] // each test crate uses a different part of this file

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{Map, Value};

/// Longest error message accepted from any parser. Generous for a message
/// that names a field, a bounded echo of the value and the fix; far below
/// the inputs (up to megabytes) the properties feed in.
pub const MAX_ERROR_LEN: usize = 2048;

/// The seed when `PROPTEST_RNG_SEED` does not choose another one.
const SEED: u64 = 0x6177_7332_617a_7572;

/// `cases` cases (unless `PROPTEST_CASES` says otherwise), a fixed seed
/// (unless `PROPTEST_RNG_SEED` does), and no regression files.
pub fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config.failure_persistence = None;
    config
}

/// A refusal is clear: a non-empty message of bounded length, whatever the
/// size of the input. Returns the message for further checks.
pub fn assert_clear_error(error: &dyn std::fmt::Display) -> String {
    let message = error.to_string();
    assert!(!message.trim().is_empty(), "an error with no message");
    assert!(
        message.len() <= MAX_ERROR_LEN,
        "an error of {} bytes echoes its input: {}…",
        message.len(),
        message.chars().take(300).collect::<String>()
    );
    message
}

/// Strings that trip parsers: empty, control characters, non-ASCII,
/// quotes, backslashes, long runs.
pub fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,24}",
        2 => ".{0,24}",
        1 => Just(String::new()),
        1 => "[\\x00-\\x1f\"\\\\/]{1,8}",
        1 => (1usize..5000).prop_map(|n| "a".repeat(n)),
    ]
}

/// A string large enough that echoing it into an error is obvious.
pub fn huge_text() -> impl Strategy<Value = String> {
    arb_huge().prop_map(|h| h.text())
}

/// A huge string, kept as a recipe so that a failing case prints short.
#[derive(Clone)]
pub struct Huge {
    unit: String,
    times: usize,
}

impl Huge {
    pub fn text(&self) -> String {
        self.unit.repeat(self.times)
    }
}

impl std::fmt::Debug for Huge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}.repeat({})", self.unit, self.times)
    }
}

/// Sometimes a huge string: most cases stay small and fast.
pub fn maybe_huge() -> impl Strategy<Value = Option<Huge>> {
    proptest::option::weighted(0.15, arb_huge())
}

pub fn arb_huge() -> impl Strategy<Value = Huge> {
    (16_000usize..64_000, "[a-zA-Z0-9é\"\\\\\\x00]").prop_map(|(times, unit)| Huge { unit, times })
}

/// Any JSON value, a few levels deep.
pub fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        arb_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(arb_text(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One structural change to a document. Targets are picked by index
/// modulo the number of candidates, so every mutation applies to any
/// document.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Replace a node with another value (often of another type).
    Replace(usize, Value),
    /// Replace a node with a huge string.
    Huge(usize, Huge),
    /// Remove one member of an object or element of an array.
    Remove(usize, usize),
    /// Add a member to an object (or an element to an array).
    Insert(usize, String, Value),
    /// Wrap a node in `depth` arrays or objects.
    Nest(usize, usize, bool),
    /// Repeat an array's elements until it has `len` of them.
    Grow(usize, usize),
}

pub fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        4 => (at, arb_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => (at, arb_huge()).prop_map(|(i, h)| Mutation::Huge(i, h)),
        3 => (at, any::<usize>()).prop_map(|(i, j)| Mutation::Remove(i, j)),
        2 => (at, arb_text(), arb_json()).prop_map(|(i, k, v)| Mutation::Insert(i, k, v)),
        1 => (at, 1usize..300, any::<bool>()).prop_map(|(i, d, a)| Mutation::Nest(i, d, a)),
        1 => (at, 2usize..300).prop_map(|(i, n)| Mutation::Grow(i, n)),
    ]
}

/// Applies mutations in turn.
pub fn mutate(mut doc: Value, mutations: &[Mutation]) -> Value {
    for m in mutations {
        apply(&mut doc, m);
    }
    doc
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

/// The `n`th node in pre-order (`n` below [`count`]).
fn node_mut(v: &mut Value, n: usize) -> &mut Value {
    fn walk<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
        if *n == 0 {
            return Some(v);
        }
        *n -= 1;
        match v {
            Value::Array(a) => a.iter_mut().find_map(|c| walk(c, n)),
            Value::Object(o) => o.values_mut().find_map(|c| walk(c, n)),
            _ => None,
        }
    }
    let mut n = n;
    walk(v, &mut n).expect("n < count")
}

fn apply(doc: &mut Value, m: &Mutation) {
    let nodes = count(doc);
    match m {
        Mutation::Replace(i, v) => *node_mut(doc, i % nodes) = v.clone(),
        Mutation::Huge(i, h) => *node_mut(doc, i % nodes) = Value::String(h.text()),
        Mutation::Remove(i, j) => match node_mut(doc, i % nodes) {
            Value::Array(a) if !a.is_empty() => {
                let at = j % a.len();
                a.remove(at);
            }
            Value::Object(o) if !o.is_empty() => {
                let key = o.keys().nth(j % o.len()).cloned().expect("non-empty");
                o.remove(&key);
            }
            _ => {}
        },
        Mutation::Insert(i, k, v) => match node_mut(doc, i % nodes) {
            Value::Array(a) => a.push(v.clone()),
            Value::Object(o) => {
                o.insert(k.clone(), v.clone());
            }
            other => *other = v.clone(),
        },
        Mutation::Nest(i, depth, arrays) => {
            let node = node_mut(doc, i % nodes);
            let mut inner = node.take();
            for _ in 0..*depth {
                inner = if *arrays {
                    Value::Array(vec![inner])
                } else {
                    Value::Object(Map::from_iter([("k".to_string(), inner)]))
                };
            }
            *node = inner;
        }
        Mutation::Grow(i, len) => {
            if let Value::Array(a) = node_mut(doc, i % nodes)
                && !a.is_empty()
            {
                let original = a.clone();
                while a.len() < *len {
                    a.push(original[a.len() % original.len()].clone());
                }
            }
        }
    }
}

/// Byte-level damage to a serialised document.
#[derive(Clone, Debug)]
pub enum ByteEdit {
    /// Keep only the first `n` bytes (`n` modulo the length).
    Truncate(usize),
    /// Insert bytes (possibly not UTF-8) at a position.
    Insert(usize, Vec<u8>),
    /// Overwrite one byte.
    Set(usize, u8),
    /// Deep nesting in front: `[[[[…` that never closes.
    OpenBrackets(usize),
}

pub fn arb_byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        3 => any::<usize>().prop_map(ByteEdit::Truncate),
        2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Set(i, b)),
        1 => (1usize..200_000).prop_map(ByteEdit::OpenBrackets),
    ]
}

pub fn edit_bytes(mut bytes: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len().max(1);
        match e {
            ByteEdit::Truncate(n) => bytes.truncate(n % len),
            ByteEdit::Insert(i, b) => {
                let at = i % len.min(bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            ByteEdit::Set(i, b) => {
                if !bytes.is_empty() {
                    let at = i % bytes.len();
                    bytes[at] = *b;
                }
            }
            ByteEdit::OpenBrackets(n) => {
                let mut nested = vec![b'['; *n];
                nested.extend_from_slice(&bytes);
                bytes = nested;
            }
        }
    }
    bytes
}

/// Bytes that print as (lossy, shortened) text when a case fails.
#[derive(Clone)]
pub struct Raw(pub Vec<u8>);

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = String::from_utf8_lossy(&self.0);
        let shown: String = text.chars().take(2000).collect();
        write!(f, "Raw({shown:?}, {} bytes)", self.0.len())
    }
}
