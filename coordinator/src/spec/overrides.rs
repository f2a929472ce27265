//! `--set key.path=value` overrides, applied to the parsed TOML document before validation.

/// Keys of the longest path accepted: spec fields are three deep (`data.tasks[1].outputs`).
const MAX_PATH_KEYS: usize = 16;

/// Applies one `key.path=value` assignment. The value is read as a TOML value
/// (`3`, `0.5`, `"adam"`, `[40, 40]`); a bare word that is not one is taken as a string. A
/// key `name[i]` is the `i`-th table of an array of tables (`data.tasks[1].outputs`), which
/// must exist.
pub fn apply(doc: &mut toml::Table, assignment: &str) -> Result<(), String> {
    let (path, raw) = assignment
        .split_once('=')
        .ok_or_else(|| "expected key.path=value".to_string())?;
    let path = path.trim();
    let value = parse_value(raw.trim())?;
    let keys: Vec<&str> = path.split('.').collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(format!("`{path}` is not a field path like meta.steps"));
    }
    // Each key is a level of nested tables, which are cloned and dropped recursively: a path
    // of thousands of keys overflowed the stack and aborted the coordinator.
    if keys.len() > MAX_PATH_KEYS {
        return Err(format!(
            "a field path has at most {MAX_PATH_KEYS} keys; this one has {}",
            keys.len()
        ));
    }
    let (last, parents) = keys.split_last().expect("split yields at least one key");
    let mut table = doc;
    for (depth, key) in parents.iter().enumerate() {
        let shown = || keys[..=depth].join(".");
        let entry = match indexed(key) {
            Some((name, index)) => table
                .get_mut(name)
                .and_then(toml::Value::as_array_mut)
                .and_then(|array| array.get_mut(index))
                .ok_or_else(|| format!("`{}` does not exist: the document has no {name} table number {index} (counting from 0)", shown()))?,
            None => table
                .entry(key.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new())),
        };
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is a value, not a table", shown()))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

/// The field path an assignment sets (`meta.steps` of `meta.steps=3`).
pub fn path_of(assignment: &str) -> Option<&str> {
    assignment.split_once('=').map(|(k, _)| k.trim())
}

/// `name[i]` as (`name`, `i`).
fn indexed(key: &str) -> Option<(&str, usize)> {
    let (name, rest) = key.split_once('[')?;
    let index = rest.strip_suffix(']')?.parse().ok()?;
    Some((name, index))
}

/// `raw` read as a TOML value; a bare word that is not one is a string (`fomaml`, a
/// fingerprint). An array, table or quoted string that does not parse is an error saying why,
/// rather than a string the field then refuses as the wrong type.
fn parse_value(raw: &str) -> Result<toml::Value, String> {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut table) => Ok(table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into()))),
        Err(e) if raw.starts_with(['[', '{', '"', '\'']) => Err(format!(
            "`{raw}` is not a TOML value: {}",
            e.message().trim()
        )),
        Err(_) => Ok(toml::Value::String(raw.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_structure_that_does_not_parse_says_why() {
        let mut doc = toml::Table::new();
        for raw in ["[1.0, 1e309]", "[0,", "{a = }", "\"open"] {
            let e = apply(&mut doc, &format!("weighting.weights={raw}")).unwrap_err();
            assert!(
                e.starts_with(&format!("`{raw}` is not a TOML value: ")),
                "{e}"
            );
        }
        assert!(doc.is_empty(), "nothing applied");
        apply(&mut doc, "task.fingerprint=3fa9e0").unwrap();
        assert_eq!(doc["task"]["fingerprint"].as_str(), Some("3fa9e0"));
    }

    #[test]
    fn values_are_read_as_toml_and_bare_words_as_strings() {
        let mut doc = toml::Table::new();
        apply(&mut doc, "meta.steps=3").unwrap();
        apply(&mut doc, "model.hidden = [8, 8]").unwrap();
        apply(&mut doc, "meta.algorithm=fomaml").unwrap();
        assert_eq!(doc["meta"]["steps"].as_integer(), Some(3));
        assert_eq!(doc["model"]["hidden"].as_array().map(|a| a.len()), Some(2));
        assert_eq!(doc["meta"]["algorithm"].as_str(), Some("fomaml"));
        assert_eq!(path_of("meta.steps = 3"), Some("meta.steps"));
        let mut doc: toml::Table = toml::from_str("[[data.tasks]]\nloss = 1\n").unwrap();
        apply(&mut doc, "data.tasks[0].outputs=2").unwrap();
        assert_eq!(doc["data"]["tasks"][0]["outputs"].as_integer(), Some(2));
        let e = apply(&mut doc, "data.tasks[1].outputs=2").unwrap_err();
        assert!(e.contains("no tasks table number 1"), "{e}");
    }

    #[test]
    fn a_path_of_thousands_of_keys_is_refused_before_it_nests_tables() {
        // Found by tests/fuzz_spec.rs: nesting 3000 tables overflowed the stack on a thread's
        // default 2 MiB when the document was cloned to be checked.
        let mut doc = toml::Table::new();
        let deep = format!("{}=1", vec!["a"; 3000].join("."));
        let e = apply(&mut doc, &deep).unwrap_err();
        assert!(e.contains("at most 16 keys; this one has 3000"), "{e}");
        assert!(doc.is_empty(), "nothing was applied");
    }
}
