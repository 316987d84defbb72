//! Canonical bytes for hashing: JSON with sorted keys and no whitespace, whatever serde_json's
//! map order is in this build (feature unification could turn on `preserve_order`).

use serde_json::Value;

/// Serialises `v` with object keys sorted at every level.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `blake3:<hex>` of `domain` + canonical JSON of `v` (the domain separates kinds of digests).
pub fn digest(domain: &str, v: &Value) -> String {
    let mut h = blake3::Hasher::new();
    h.update(domain.as_bytes());
    h.update(b"\n");
    h.update(canonical_json(v).as_bytes());
    format!("blake3:{}", h.finalize().to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_level() {
        let v = json!({"b": 1, "a": {"d": [1, {"z": 0, "y": "s"}], "c": null}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[1,{"y":"s","z":0}]},"b":1}"#
        );
    }

    #[test]
    fn digest_is_pinned() {
        // Golden value: changing the canonical form changes every cache key, so it must be deliberate.
        let d = digest("pollard-test", &json!({"b": 2, "a": 1}));
        assert_eq!(
            d,
            format!(
                "blake3:{}",
                blake3::hash(b"pollard-test\n{\"a\":1,\"b\":2}").to_hex()
            )
        );
    }
}
