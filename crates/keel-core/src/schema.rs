//! Checks a value against a JSON Schema (tool arguments, structured answers, eval outputs):
//! the keywords such schemas use (`type` incl. lists, `properties`, `required`,
//! `additionalProperties`, `items`, `enum`, `const`, `minimum`/`maximum`,
//! `minLength`/`maxLength`, `minItems`/`maxItems`, `anyOf`, `oneOf`, `allOf`, local `$ref`).
//! The first violation comes back with its JSON pointer, so a model can fix its call.

use serde_json::Value;

/// The first place a value breaks its schema, said as a model or a person should read it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

pub fn validate(schema: &Value, value: &Value) -> Result<(), Violation> {
    check(schema, schema, value, "").map_err(Violation)
}

/// A local `$ref` (`#/$defs/Name`, `#/definitions/Name`) resolved against the root schema.
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let path = reference.strip_prefix('#')?;
    if path.is_empty() {
        return Some(root);
    }
    root.pointer(path)
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.as_f64().is_some_and(|n| n.fract() == 0.0),
        _ => true,
    }
}

fn at(pointer: &str) -> &str {
    if pointer.is_empty() { "the arguments" } else { pointer }
}

fn check(root: &Value, schema: &Value, value: &Value, pointer: &str) -> Result<(), String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let target = resolve(root, reference).ok_or_else(|| format!("the schema refers to `{reference}`, which it does not define"))?;
        return check(root, target, value, pointer);
    }
    let Some(schema) = schema.as_object() else { return Ok(()) };
    match schema.get("type") {
        Some(Value::String(name)) if !type_matches(name, value) => {
            return Err(format!("{} must be of type {name}, got {value}", at(pointer)));
        }
        Some(Value::Array(names)) if !names.iter().filter_map(Value::as_str).any(|n| type_matches(n, value)) => {
            return Err(format!("{} must be one of the types {}, got {value}", at(pointer), Value::Array(names.clone())));
        }
        _ => {}
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        return Err(format!("{} must be one of {}, got {value}", at(pointer), Value::Array(allowed.clone())));
    }
    if let Some(expected) = schema.get("const")
        && expected != value
    {
        return Err(format!("{} must be {expected}, got {value}", at(pointer)));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            return Err(format!("{} must be at least {min}, got {n}", at(pointer)));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            return Err(format!("{} must be at most {max}, got {n}", at(pointer)));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            return Err(format!("{} must be at least {min} characters long", at(pointer)));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            return Err(format!("{} must be at most {max} characters long", at(pointer)));
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            return Err(format!("{} must have at least {min} items", at(pointer)));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && (items.len() as u64) > max
        {
            return Err(format!("{} must have at most {max} items", at(pointer)));
        }
        if let Some(item_schema) = schema.get("items") {
            for (idx, item) in items.iter().enumerate() {
                check(root, item_schema, item, &format!("{pointer}/{idx}"))?;
            }
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    return Err(format!("{} is missing the required field `{name}`", at(pointer)));
                }
            }
        }
        for (name, field) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(field_schema) => check(root, field_schema, field, &format!("{pointer}/{name}"))?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        let known: Vec<&String> = properties.map(|p| p.keys().collect()).unwrap_or_default();
                        return Err(format!("{} has an unknown field `{name}` (known: {known:?})", at(pointer)));
                    }
                    Some(extra @ Value::Object(_)) => check(root, extra, field, &format!("{pointer}/{name}"))?,
                    _ => {}
                },
            }
        }
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for sub in all {
            check(root, sub, value, pointer)?;
        }
    }
    for keyword in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(keyword).and_then(Value::as_array) {
            let errors: Vec<String> = options.iter().filter_map(|sub| check(root, sub, value, pointer).err()).collect();
            if errors.len() == options.len() {
                return Err(format!("{} matches none of the allowed shapes ({})", at(pointer), errors.join("; ")));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;
    use serde_json::json;

    #[test]
    fn reports_the_first_violation_with_its_place() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 1},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "unit": {"enum": ["c", "f"]},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                "note": {"type": ["string", "null"]}
            },
            "required": ["city"],
            "additionalProperties": false
        });
        assert!(validate(&schema, &json!({"city": "Paris", "days": 3, "unit": "c", "tags": ["a"], "note": null})).is_ok());
        let cases = [
            (json!({}), "missing the required field `city`"),
            (json!({"city": 3}), "/city must be of type string"),
            (json!({"city": "P", "days": 9}), "/days must be at most 7"),
            (json!({"city": "P", "days": 1.5}), "/days must be of type integer"),
            (json!({"city": "P", "unit": "k"}), "/unit must be one of"),
            (json!({"city": "P", "tags": ["a", 1]}), "/tags/1 must be of type string"),
            (json!({"city": "P", "tags": ["a", "b", "c"]}), "/tags must have at most 2 items"),
            (json!({"city": "P", "colour": "red"}), "unknown field `colour`"),
            (json!("Paris"), "the arguments must be of type object"),
        ];
        for (value, expected) in cases {
            let err = validate(&schema, &value).unwrap_err();
            assert!(err.0.contains(expected), "{value}: {err}");
        }
    }

    #[test]
    fn any_of_needs_one_match() {
        let schema = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
        assert!(validate(&schema, &json!(3)).is_ok());
        assert!(validate(&schema, &json!(true)).unwrap_err().0.contains("none of the allowed shapes"));
    }
}
