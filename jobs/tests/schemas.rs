//! Every job type of the catalog describes its payload with a JSON Schema, and its
//! example payload (what `culm examples` enqueues) is valid under that schema.

#[test]
fn every_job_type_has_a_schema_its_example_satisfies() {
    let registry = culm_jobs::registry().expect("catalog registers");
    let mut problems = Vec::new();
    for spec in registry.iter() {
        let Some(schema) = &spec.schema else {
            problems.push(format!(
                "{}: no payload schema (derive JsonSchema, return schema_of)",
                spec.name
            ));
            continue;
        };
        let validator = match jsonschema::validator_for(schema) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{}: schema does not compile: {e}", spec.name));
                continue;
            }
        };
        // Job types without an example (test-only platform jobs) are not in `culm examples`.
        let Some(example) = &spec.example else { continue };
        for e in validator.iter_errors(example) {
            problems.push(format!("{}: example invalid at {}: {e}", spec.name, e.instance_path));
        }
        // The schema is as strict as the payload type: unknown fields are refused by both.
        let mut extra = example.clone();
        if let Some(o) = extra.as_object_mut() {
            o.insert("no_such_field".into(), serde_json::json!(1));
            if validator.is_valid(&extra) {
                problems.push(format!(
                    "{}: schema accepts an unknown field the job refuses",
                    spec.name
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_schema_refuses_what_the_job_type_refuses() {
    let registry = culm_jobs::registry().expect("catalog registers");
    let spec = registry.get("platform.sleep").expect("registered");
    let validator = jsonschema::validator_for(spec.schema.as_ref().expect("schema")).expect("compiles");
    assert!(validator.is_valid(&serde_json::json!({"ms": 5})));
    assert!(!validator.is_valid(&serde_json::json!({"ms": "five"})));
    assert!(spec.validate(&serde_json::json!({"ms": "five"})).is_err());
}
