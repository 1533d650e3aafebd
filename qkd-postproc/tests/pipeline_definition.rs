//! Pipeline definition files: the committed examples load, the XML form is
//! the TOML form, errors name line and field; run-time parameters.

use qkd_core::module::{ModuleHost, ParameterError, Value};
use qkd_core::{Role, SecretKey};
use qkd_postproc::auth::{PresharedSecret, SecretId};
use qkd_postproc::pipeline::{DefinitionError, Pipeline, PipelineDefinition};

const TOML: &str = include_str!("../pipelines/default.toml");
const XML: &str = include_str!("../pipelines/default.xml");

#[test]
fn committed_examples_load_and_agree() {
    let t = PipelineDefinition::from_toml(TOML).unwrap();
    let x = PipelineDefinition::from_xml(XML).unwrap();
    assert_eq!(t, x);
    assert_eq!(t.digest(), x.digest());
    assert_eq!(
        t.stage_names(),
        ["sift", "estimate", "cascade", "confirm", "amplify"]
    );
    assert_eq!(t, PipelineDefinition::default());
}

#[test]
fn errors_name_the_line_and_the_field() {
    let bad = TOML.replace("variant = \"option7\"", "variant = \"option9\"");
    let e = PipelineDefinition::from_toml(&bad).unwrap_err();
    let line = TOML.lines().position(|l| l.contains("option7")).unwrap() + 1;
    assert!(
        e.to_string()
            .starts_with(&format!("line {line}: `stage[2].params.variant`")),
        "{e}"
    );
    let bad = TOML.replace("tag_bits = 64", "tag_bits = 7");
    let e = PipelineDefinition::from_toml(&bad).unwrap_err();
    assert!(e.to_string().contains("stage[3].params.tag_bits"), "{e}");
    let bad = TOML.replace("max_blocks_in_flight = 4", "max_blocks_in_flight = 0");
    let line = TOML
        .lines()
        .position(|l| l.starts_with("max_blocks_in_flight"))
        .unwrap()
        + 1;
    assert!(matches!(
        PipelineDefinition::from_toml(&bad),
        Err(DefinitionError::Invalid { line: Some(l), .. }) if l == line
    ));
    // `ldpc` in place of `cascade` with Cascade's parameters: the first
    // one LDPC does not know is named.
    let bad = TOML.replace("name = \"cascade\"", "name = \"ldpc\"");
    let e = PipelineDefinition::from_toml(&bad).unwrap_err();
    assert!(
        matches!(&e, DefinitionError::Invalid { field, .. } if field == "stage[2].params.chunk_bits"),
        "{e}"
    );
    let bad = TOML.replace("name = \"confirm\"", "name = \"verify\"");
    assert!(matches!(
        PipelineDefinition::from_toml(&bad),
        Err(DefinitionError::UnknownStage { .. })
    ));
    let bad = XML.replace("value=\"option7\"", "value=\"option9\"");
    let e = PipelineDefinition::from_xml(&bad).unwrap_err();
    assert!(e.to_string().contains("stage[2].params.variant"), "{e}");
    let bad = XML.replace(
        "<stage name=\"sift\"/>",
        "<stage name=\"sift\"/><stage name=\"sift\"/>",
    );
    assert!(PipelineDefinition::from_xml(&bad).is_err());
    let bad = XML.replace("name=\"cascade\"", "name=\"ldpc\"");
    assert!(matches!(
        PipelineDefinition::from_xml(&bad),
        Err(DefinitionError::Invalid { .. })
    ));
    assert!(PipelineDefinition::from_xml("<pipeline><bogus/></pipeline>").is_err());
    assert!(PipelineDefinition::from_toml("").is_err());
}

const LDPC_TOML: &str = include_str!("../pipelines/ldpc.toml");
const LDPC_XML: &str = include_str!("../pipelines/ldpc.xml");

#[test]
fn committed_ldpc_examples_load_and_agree() {
    let t = PipelineDefinition::from_toml(LDPC_TOML).unwrap();
    let x = PipelineDefinition::from_xml(LDPC_XML).unwrap();
    assert_eq!(t, x);
    assert_eq!(t.digest(), x.digest());
    assert_eq!(
        t.stage_names(),
        ["sift", "estimate", "ldpc", "confirm", "amplify"]
    );
    // Both sides must run the same correction: the digests differ.
    assert_ne!(t.digest(), PipelineDefinition::default().digest());
    let other = PipelineDefinition::from_toml(&LDPC_TOML.replace("\"blind\"", "\"rate_adaptive\""))
        .unwrap();
    assert_ne!(t.digest(), other.digest());
}

const GUIDED_TOML: &str = include_str!("../pipelines/ldpc-guided.toml");

/// The guided example loads, differs from the blind one (digest), and its
/// own parameters are refused out of range with their line and field.
#[test]
fn guided_example_loads_and_its_parameters_are_checked() {
    let g = PipelineDefinition::from_toml(GUIDED_TOML).unwrap();
    let t = PipelineDefinition::from_toml(LDPC_TOML).unwrap();
    assert_eq!(g.stage_names(), t.stage_names());
    assert_ne!(g.digest(), t.digest());
    // The guided-only parameters are not in a blind definition's digest
    // (its saved states stay valid), they are in a guided one's.
    let blind = LDPC_TOML.replace("modulated = 0.1 }", "modulated = 0.1, guided_step = 0.01 }");
    assert_ne!(blind, LDPC_TOML);
    assert_eq!(
        PipelineDefinition::from_toml(&blind).unwrap().digest(),
        t.digest()
    );
    let other = GUIDED_TOML.replace("guided_step = 0.005", "guided_step = 0.01");
    assert_ne!(
        PipelineDefinition::from_toml(&other).unwrap().digest(),
        g.digest()
    );
    let line = GUIDED_TOML
        .lines()
        .position(|l| l.contains("variant = \"guided\""))
        .unwrap()
        + 1;
    let cases = [
        ("guided_step = 0.005", "guided_step = 0", "guided_step"),
        ("guided_step = 0.005", "guided_step = 0.2", "guided_step"),
        (
            "resume_iterations = 20",
            "resume_iterations = 0",
            "resume_iterations",
        ),
        (
            "resume_iterations = 20",
            "resume_iterations = 1001",
            "resume_iterations",
        ),
        ("variant = \"guided\"", "variant = \"guide\"", "variant"),
    ];
    for (from, to, field) in cases {
        let bad = GUIDED_TOML.replace(from, to);
        let e = PipelineDefinition::from_toml(&bad).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("line {line}: `stage[2].params.{field}`")),
            "{to}: {e}"
        );
    }
}

#[test]
fn ldpc_errors_name_the_line_and_the_field() {
    let cases = [
        ("frame_bits = 131072", "frame_bits = 131073", "frame_bits"),
        (
            "min_frame_bits = 4096",
            "min_frame_bits = 512",
            "min_frame_bits",
        ),
        ("blind_step = 0.0025", "blind_step = 0.5", "blind_step"),
        (
            "max_blind_rounds = 40",
            "max_blind_rounds = 0",
            "max_blind_rounds",
        ),
        (
            "max_iterations = 60",
            "max_iterations = 5000",
            "max_iterations",
        ),
        ("efficiency = 1.08", "efficiency = 0.9", "efficiency"),
        ("modulated = 0.1", "modulated = 0.45", "modulated"),
        (
            "adaptive_start = true",
            "adaptive_start = 1",
            "adaptive_start",
        ),
        ("variant = \"blind\"", "variant = \"option7\"", "variant"),
        ("modulated = 0.1", "modulated = 0.1, bogus = 1", "bogus"),
    ];
    let line = LDPC_TOML
        .lines()
        .position(|l| l.contains("frame_bits = 131072"))
        .unwrap()
        + 1;
    for (from, to, field) in cases {
        let bad = LDPC_TOML.replace(from, to);
        let e = PipelineDefinition::from_toml(&bad).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("line {line}: `stage[2].params.{field}`")),
            "{to}: {e}"
        );
    }
    let both = LDPC_TOML.replace(
        "[[stage]]\nname = \"confirm\"",
        "[[stage]]\nname = \"cascade\"\n\n[[stage]]\nname = \"confirm\"",
    );
    let e = PipelineDefinition::from_toml(&both).unwrap_err();
    assert!(e.to_string().contains("only one correction stage"), "{e}");
    let bad = LDPC_XML.replace("value=\"131072\"", "value=\"3\"");
    let e = PipelineDefinition::from_xml(&bad).unwrap_err();
    assert!(e.to_string().contains("stage[2].params.frame_bits"), "{e}");
}

#[test]
fn ldpc_parameters_are_validated_and_owned_by_alice() {
    let def = PipelineDefinition::from_toml(LDPC_TOML).unwrap();
    let secret = || PresharedSecret::new(SecretId::new(1), SecretKey::from_slice(&[1; 4096]));
    let mut alice = Pipeline::new(&def, Role::Alice, secret(), [3; 32]).unwrap();
    assert_eq!(
        alice.module_names(),
        [
            "sift", "estimate", "ldpc", "confirm", "amplify", "auth", "pipeline"
        ]
    );
    let ldpc = alice.module_mut("ldpc").unwrap();
    let before = ldpc.parameters();
    assert!(
        ldpc.set_parameter("variant", &Value::Text("option8".into()))
            .is_err()
    );
    assert!(
        ldpc.set_parameter("frame_bits", &Value::U64(3 << 10))
            .is_err()
    );
    assert!(
        ldpc.set_parameter("efficiency", &Value::F64(f64::NAN))
            .is_err()
    );
    assert_eq!(
        ldpc.parameters(),
        before,
        "a refused value changed something"
    );
    ldpc.set_parameter("variant", &Value::Text("rate_adaptive".into()))
        .unwrap();
    ldpc.set_parameter("frame_bits", &Value::U64(1 << 14))
        .unwrap();
    assert_eq!(ldpc.parameter("frame_bits").unwrap(), Value::U64(1 << 14));
    for name in [
        "frames",
        "decode_failures",
        "blind_rounds",
        "revealed_bits",
        "leaked_bits",
    ] {
        assert!(
            ldpc.statistics().iter().any(|s| s.name == name),
            "no statistic {name}"
        );
    }
    assert!(alice.module("cascade").is_none());
    let mut bob = Pipeline::new(&def, Role::Bob, secret(), [4; 32]).unwrap();
    assert_eq!(
        bob.module_mut("ldpc")
            .unwrap()
            .set_parameter("max_iterations", &Value::U64(20)),
        Err(ParameterError::ReadOnly {
            name: "max_iterations".into()
        })
    );
}

fn pipeline(role: Role) -> Pipeline {
    Pipeline::new(
        &PipelineDefinition::default(),
        role,
        PresharedSecret::new(SecretId::new(1), SecretKey::from_slice(&[1; 4096])),
        [3; 32],
    )
    .unwrap()
}

#[test]
fn parameters_are_validated_and_owned_by_alice() {
    let mut alice = pipeline(Role::Alice);
    assert_eq!(
        alice.module_names(),
        [
            "sift", "estimate", "cascade", "confirm", "amplify", "auth", "pipeline"
        ]
    );
    let cascade = alice.module_mut("cascade").unwrap();
    assert!(
        cascade
            .set_parameter("variant", &Value::Text("option9".into()))
            .is_err()
    );
    cascade
        .set_parameter("variant", &Value::Text("option8".into()))
        .unwrap();
    assert_eq!(
        cascade.parameter("variant").unwrap(),
        Value::Text("option8".into())
    );
    let estimate = alice.module_mut("estimate").unwrap();
    assert!(
        estimate
            .set_parameter("abort_qber", &Value::F64(f64::NAN))
            .is_err()
    );
    estimate
        .set_parameter("abort_qber", &Value::F64(0.05))
        .unwrap();
    let mut bob = pipeline(Role::Bob);
    assert_eq!(
        bob.module_mut("cascade")
            .unwrap()
            .set_parameter("variant", &Value::Text("original".into())),
        Err(ParameterError::ReadOnly {
            name: "variant".into()
        })
    );
    bob.module_mut("pipeline")
        .unwrap()
        .set_parameter("max_blocks_in_flight", &Value::U64(2))
        .unwrap();
    assert!(
        alice
            .module("auth")
            .unwrap()
            .statistics()
            .iter()
            .any(|s| s.name == "remaining_bits")
    );
}

#[test]
fn saved_states_refuse_the_other_side_and_corruption() {
    let mut alice = pipeline(Role::Alice);
    let state = alice.save_state().unwrap();
    let def = PipelineDefinition::default();
    assert!(Pipeline::from_state(&def, Role::Alice, &state).is_ok());
    assert!(matches!(
        Pipeline::from_state(&def, Role::Bob, &state),
        Err(qkd_postproc::pipeline::StateError::OtherSide { .. })
    ));
    let mut bob = pipeline(Role::Bob);
    assert!(bob.restore_state(&state).is_err());
    let mut corrupt = state.clone();
    corrupt.truncate(state.len() / 2);
    assert!(matches!(
        Pipeline::from_state(&def, Role::Alice, &corrupt),
        Err(qkd_postproc::pipeline::StateError::Corrupt(_))
    ));
    let other = PipelineDefinition::from_toml(&TOML.replace("option7", "option8")).unwrap();
    assert!(matches!(
        Pipeline::from_state(&other, Role::Alice, &state),
        Err(qkd_postproc::pipeline::StateError::Definition)
    ));
}
