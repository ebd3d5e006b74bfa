use super::*;

#[test]
fn reads_a_full_file() {
    let config: RmConfig = toml::from_str(
        r#"
        listen = "127.0.0.1:9000"
        db = "postgres://localhost/spindle"
        cluster_secret = "0123456789abcdef0123"
        node_expiry = 5
        heartbeat_interval = 500
        [[users]]
        name = "alice"
        token = "alice-token-0123456789"
        admin = true
        "#,
    )
    .unwrap();
    config.validate().unwrap();
    assert_eq!(config.node_expiry, Duration::from_secs(5));
    assert_eq!(config.users[0].name, "alice");
}

#[test]
fn short_secrets_are_refused() {
    let config = RmConfig {
        cluster_secret: "short".into(),
        ..RmConfig::default()
    };
    assert!(config.validate().unwrap_err().to_string().contains("cluster_secret"));
}

#[test]
fn unknown_fields_are_refused() {
    let err = toml::from_str::<RmConfig>("lisen = \"x\"").unwrap_err();
    assert!(err.to_string().contains("lisen"));
}

/// `text` as a config file, read with `parse_file` (which names a bad field by its path).
fn parse(text: &str) -> Result<RmConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rm.toml");
    std::fs::write(&path, text).unwrap();
    RmConfig::parse_file(&path)
}

#[test]
fn durations_that_are_not_finite_non_negative_and_sane_name_their_field() {
    let cases = [
        ("node_expiry = inf", "field `node_expiry`", "not inf"),
        ("node_expiry = -inf", "field `node_expiry`", "not -inf"),
        ("node_expiry = nan", "field `node_expiry`", "not NaN"),
        ("node_expiry = -1", "field `node_expiry`", "not -1"),
        ("node_expiry = 1e300", "field `node_expiry`", "from 0 to 315360000 (ten years)"),
        ("retain_finished = 400000000", "field `retain_finished`", "seconds"),
        (
            "heartbeat_interval = -5",
            "field `heartbeat_interval`",
            "milliseconds from 0 to 315360000000",
        ),
        (
            "[scheduler]\npreemption_grace = nan",
            "field `scheduler.preemption_grace`",
            "not NaN",
        ),
        ("[http]\nheader_read_timeout = -0.5", "field `http.header_read_timeout`", "not -0.5"),
    ];
    for (text, field, reason) in cases {
        let message = parse(text).unwrap_err().to_string();
        assert!(message.contains(field) && message.contains(reason), "{text}: {message}");
    }
}

#[test]
fn durations_take_fractions_and_whole_units_exactly() {
    let config = parse("node_expiry = 2.5\nheartbeat_interval = 333\nretain_finished = 0\n[http]\nrequest_timeout = 0.1\n").unwrap();
    assert_eq!(config.node_expiry, Duration::from_millis(2500));
    assert_eq!(config.heartbeat_interval, Duration::from_millis(333));
    assert_eq!(config.retain_finished, Duration::ZERO);
    assert_eq!(config.http.request_timeout, Duration::from_millis(100));
}

#[test]
fn http_limits_have_defaults_and_are_checked() {
    let valid = RmConfig {
        cluster_secret: "0123456789abcdef0123".into(),
        ..RmConfig::default()
    };
    valid.validate().unwrap();
    assert_eq!(valid.http.max_connections, 20_000);
    assert_eq!(valid.http.server_limits().header_read_timeout, Duration::from_secs(10));

    let mut no_connections = valid.clone();
    no_connections.http.max_connections = 0;
    let message = no_connections.validate().unwrap_err().to_string();
    assert!(message.contains("http.max_connections"), "{message}");
    let mut no_timeout = valid;
    no_timeout.http.header_read_timeout = Duration::ZERO;
    let message = no_timeout.validate().unwrap_err().to_string();
    assert!(message.contains("http.header_read_timeout"), "{message}");
}

#[test]
fn sqlite_synchronous_defaults_to_full_and_names_itself_when_wrong() {
    assert_eq!(parse("").unwrap().store_options().sqlite_synchronous, SqliteSynchronous::Full);
    let normal = parse("sqlite_synchronous = \"normal\"").unwrap();
    assert_eq!(normal.sqlite_synchronous, SqliteSynchronous::Normal);
    let message = parse("sqlite_synchronous = \"fast\"").unwrap_err().to_string();
    assert!(
        message.contains("field `sqlite_synchronous`") && message.contains("\"normal\""),
        "{message}"
    );
}

#[test]
fn the_shipped_example_works_once_its_placeholders_are_replaced() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/rm.toml");
    let shipped = RmConfig::parse_file(&path).unwrap();
    let refused = shipped.validate().unwrap_err().to_string();
    assert!(refused.contains("cluster_secret") && refused.contains("placeholder"), "{refused}");

    let text = std::fs::read_to_string(&path).unwrap();
    let mut replaced = String::new();
    for (index, piece) in text.split("\"CHANGE-ME").enumerate() {
        if index == 0 {
            replaced.push_str(piece);
            continue;
        }
        let rest = &piece[piece.find('"').expect("a quoted placeholder")..];
        replaced.push_str(&format!("\"replaced-value-{index:02}-0123456789abcdef{rest}"));
    }
    let config: RmConfig = toml::from_str(&replaced).unwrap();
    config.validate().unwrap();
    let tree = config.queue_tree().unwrap();
    assert!(tree.leaf("default").is_some(), "examples/ submit to `default`");
    let alice = config.users.iter().find(|user| user.name == "alice").unwrap();
    assert_eq!(config.unix_account(alice).as_deref(), Some("alice"));
    let tokens: std::collections::BTreeSet<&str> = config.users.iter().map(|user| user.token.as_str()).collect();
    assert_eq!(tokens.len(), config.users.len(), "every user's token differs");
}

#[test]
fn tls_needs_its_certificate_key_and_ca_together() {
    let valid = RmConfig {
        cluster_secret: "0123456789abcdef0123".into(),
        ..RmConfig::default()
    };
    let file = |name: &str| Some(std::path::PathBuf::from(name));
    let with = |cert, key, ca| {
        let mut config = valid.clone();
        config.tls = TlsConfig {
            cert_file: cert,
            key_file: key,
            ca_file: ca,
        };
        config.validate().map_err(|err| err.to_string())
    };
    assert!(with(None, None, None).is_ok());
    assert!(with(file("c.pem"), file("k.pem"), file("ca.pem")).is_ok());
    for (cert, key, ca, field) in [
        (file("c.pem"), None, file("ca.pem"), "tls.key_file"),
        (None, file("k.pem"), file("ca.pem"), "tls.cert_file"),
        (file("c.pem"), file("k.pem"), None, "tls.ca_file"),
        (None, None, file("ca.pem"), "tls.cert_file"),
    ] {
        let message = with(cert, key, ca).unwrap_err();
        assert!(message.contains(field), "{field}: {message}");
    }
    let parsed =
        parse("cluster_secret = \"0123456789abcdef0123\"\n[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\nca_file = \"/ca.pem\"\n")
            .unwrap();
    assert!(parsed.tls.enabled());
}

#[test]
fn departed_nodes_are_forgotten_after_an_hour_by_default_never_with_0_and_not_too_soon() {
    let read = |text: &str| {
        parse(&format!("cluster_secret = \"0123456789abcdef0123\"\n{text}"))
            .and_then(|config| config.validate().map(|()| config))
            .map_err(|err| err.to_string())
    };
    assert_eq!(read("").unwrap().departed_node_expiry_ms(), Some(3_600_000));
    assert_eq!(read("departed_node_expiry = 90.5").unwrap().departed_node_expiry_ms(), Some(90_500));
    assert_eq!(read("departed_node_expiry = 0").unwrap().departed_node_expiry_ms(), None);
    let message = read("departed_node_expiry = 5").unwrap_err();
    assert!(
        message.contains("field `departed_node_expiry`") && message.contains("at least 60 seconds") && message.contains("not 5"),
        "{message}"
    );
    let message = read("departed_node_expiry = -1").unwrap_err();
    assert!(message.contains("field `departed_node_expiry`"), "{message}");
}
