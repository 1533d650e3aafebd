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
    let bad = TOML.replace("name = \"cascade\"", "name = \"ldpc\"");
    assert!(matches!(
        PipelineDefinition::from_toml(&bad),
        Err(DefinitionError::NotImplemented { .. })
    ));
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
        Err(DefinitionError::NotImplemented { .. })
    ));
    assert!(PipelineDefinition::from_xml("<pipeline><bogus/></pipeline>").is_err());
    assert!(PipelineDefinition::from_toml("").is_err());
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
