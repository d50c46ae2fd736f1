//! Login, tokens (401, expiry, re-login) and media-type negotiation
//! (reference/midonet-api.md §1.1, §1.2, §4.3 items 1–2).

mod common;

use std::time::Duration;

use common::*;
use midonet_emulator::{AuthMode, Emulator, EmulatorOptions};
use serde_json::json;

fn emulator(opts: EmulatorOptions) -> Emulator {
    Emulator::start(opts.user("admin", "secret")).expect("start")
}

fn login_with(emu: &Emulator, auth: Option<&str>) -> Resp {
    let h: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
    send(emu.addr(), "POST", "/midonet-api/login", &h, None)
}

#[test]
fn login_issues_a_token_with_midonet_shapes() {
    let emu = emulator(EmulatorOptions::default().token_lifetime(Duration::from_secs(3600)));
    let r = login_with(&emu, Some(&basic("admin", "secret")));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(TOKEN));
    let v = r.json();
    let key = v["key"].as_str().unwrap();
    assert!(!key.is_empty());
    // EEE, dd-MM-yyyy HH:mm:ss z
    let expires = v["expires"].as_str().unwrap();
    assert!(
        expires.ends_with(" GMT") && expires.as_bytes()[3] == b',',
        "{expires}"
    );
    assert_eq!(
        expires.len(),
        "Tue, 01-12-2026 22:00:00 GMT".len(),
        "{expires}"
    );
    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.starts_with(&format!("sessionId={key}; Expires=")),
        "{cookie}"
    );
}

#[test]
fn login_rejects_bad_authorization_headers() {
    let emu = emulator(EmulatorOptions::default());
    let r = login_with(&emu, None);
    assert_eq!(r.status, 401);
    assert_eq!(r.message(), "Authorization header is not set.");
    for bad in [
        "Bearer abc".to_string(),
        "Basic !!!notbase64".to_string(),
        basic("admin", ""),        // "admin:" splits into one part
        basic("admin", "se:cret"), // three parts
    ] {
        let r = login_with(&emu, Some(&bad));
        assert_eq!(r.status, 401, "{bad}");
        assert_eq!(r.message(), "Authorization header is not valid", "{bad}");
    }
    let r = login_with(&emu, Some(&basic("admin", "wrong")));
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    let r = send(
        emu.addr(),
        "GET",
        "/midonet-api/login",
        &[("Authorization", &basic("admin", "secret"))],
        None,
    );
    assert_eq!(r.status, 405);
}

#[test]
fn calls_need_a_valid_token() {
    let emu = emulator(EmulatorOptions::default());
    let mut c = Client::new(&emu);
    let r = c.get("/routers", ROUTERS);
    assert_eq!(r.status, 401);
    assert_eq!(r.message(), "No token was passed in.");
    // Even unknown paths are behind the auth filter.
    assert_eq!(c.get("/no-such-thing", "application/json").status, 401);
    c.token = Some("made-up".into());
    assert_eq!(c.get("/routers", ROUTERS).status, 401);
    c.login("admin", "secret");
    assert_eq!(c.get("/routers", ROUTERS).status, 200);
}

#[test]
fn expired_token_gets_401_and_relogin_works() {
    let emu = emulator(EmulatorOptions::default().token_lifetime(Duration::from_millis(200)));
    let mut c = Client::new(&emu);
    c.login("admin", "secret");
    assert_eq!(c.get("/routers", ROUTERS).status, 200);
    std::thread::sleep(Duration::from_millis(400));
    let r = c.get("/routers", ROUTERS);
    assert_eq!(r.status, 401);
    assert!(r.message().contains("expired"), "{}", r.message());
    assert_eq!(c.login("admin", "secret").status, 200);
    assert_eq!(c.get("/routers", ROUTERS).status, 200);
}

#[test]
fn tokens_can_be_expired_on_demand() {
    let emu = emulator(EmulatorOptions::default());
    let mut c = Client::new(&emu);
    c.login("admin", "secret");
    emu.expire_tokens();
    assert_eq!(c.get("/routers", ROUTERS).status, 401);
    c.login("admin", "secret");
    assert_eq!(c.control("DELETE", "/tokens", None).status, 204);
    assert_eq!(c.get("/routers", ROUTERS).status, 401);
}

#[test]
fn mock_auth_accepts_calls_without_token() {
    let emu = emulator(EmulatorOptions::default().auth(AuthMode::Mock));
    let c = Client::new(&emu);
    assert_eq!(c.get("/routers", ROUTERS).status, 200);
    // The Basic header is still parsed.
    assert_eq!(login_with(&emu, None).status, 401);
}

#[test]
fn create_checks_content_type_with_406() {
    let f = fixture();
    let c = &f.client;
    let body = json!({"name": "r"});
    for bad in [
        "application/vnd.org.midonet.Router-v2+json", // the plugin's default version 1 map
        "application/vnd.org.midonet.Router-v1+json",
        "text/plain",
        "application/vnd.org.midonet.Bridge-v4+json",
    ] {
        assert_eq!(c.post("/routers", bad, &body).status, 406, "{bad}");
    }
    let b = serde_json::to_vec(&body).unwrap();
    assert_eq!(
        c.request("POST", "/routers", &[], Some(&b)).status,
        406,
        "no Content-Type"
    );
    c.create("/routers", "application/json", &body);
    c.create("/routers", &format!("{ROUTER}; charset=UTF-8"), &body);
    assert_eq!(
        c.post(
            "/bridges",
            "application/vnd.org.midonet.Bridge-v1+json",
            &body
        )
        .status,
        406
    );
    c.create(
        "/bridges",
        "application/vnd.org.midonet.Bridge-v5+json",
        &body,
    );
    let br = c.bridge("b");
    let port = json!({"type": "Bridge"});
    assert_eq!(
        c.post(
            &format!("/bridges/{br}/ports"),
            "application/vnd.org.midonet.Port-v2+json",
            &port
        )
        .status,
        406
    );
    c.create(
        &format!("/bridges/{br}/ports"),
        "application/vnd.org.midonet.Port-v4+json",
        &port,
    );
}

#[test]
fn get_checks_accept_with_406() {
    let f = fixture();
    let c = &f.client;
    let r = c.router("r");
    let path = format!("/routers/{r}");
    assert_eq!(
        c.request("GET", &path, &[], None).status,
        406,
        "missing Accept"
    );
    assert_eq!(
        c.get(&path, "application/vnd.org.midonet.Router-v2+json")
            .status,
        406
    );
    assert_eq!(
        c.get(&path, &format!("{ROUTER}, application/json")).status,
        406,
        "comma list"
    );
    let ok = c.get(&path, ROUTER);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("content-type"), Some(ROUTER));
    let any = c.get(&path, "*/*");
    assert_eq!(any.status, 200);
    assert_eq!(
        any.header("content-type"),
        Some(ROUTER),
        "wildcard gets the vendor type"
    );
    assert_eq!(
        c.get(&path, "application/json").header("content-type"),
        Some("application/json")
    );
    // Lists use the collection types.
    assert_eq!(c.get("/routers", ROUTER).status, 406);
    assert_eq!(c.get("/routers", ROUTERS).status, 200);
    assert_eq!(c.get("/routers", "application/json").status, 200);
    // The binding list produces only its collection type.
    let h = format!("/hosts/{}/ports", f.host);
    assert_eq!(c.get(&h, "application/json").status, 406);
    assert_eq!(c.get(&h, BINDINGS).status, 200);
}

#[test]
fn link_and_binding_reject_wrong_content_type_with_415() {
    let f = fixture();
    let c = &f.client;
    let r = c.router("r");
    let a = c.router_port(r, "10.0.0.0", 24, "10.0.0.1");
    let b = c.router_port(f.provider, "10.0.0.0", 24, "10.0.0.2");
    let body = json!({"peerId": b});
    assert_eq!(c.post(&format!("/ports/{a}/link"), PORT, &body).status, 415);
    let raw = serde_json::to_vec(&body).unwrap();
    assert_eq!(
        c.request("POST", &format!("/ports/{a}/link"), &[], Some(&raw))
            .status,
        415
    );
    assert_eq!(
        c.post(&format!("/ports/{a}/link"), "application/json", &body)
            .status,
        201
    );
    let br = c.bridge("b");
    let p = c.bridge_port(br);
    let bind = json!({"portId": p, "interfaceName": "vif1"});
    assert_eq!(
        c.post(&format!("/hosts/{}/ports", f.host), PORT, &bind)
            .status,
        415
    );
    assert_eq!(
        c.post(&format!("/hosts/{}/ports", f.host), BINDING, &bind)
            .status,
        201
    );
}

#[test]
fn the_2015_media_types_are_refused_like_every_5x_release() {
    let f = fixture();
    let c = &f.client;
    for (path, ct) in [
        ("/routers", "application/vnd.org.midonet.Router-v2+json"),
        ("/bridges", "application/vnd.org.midonet.Bridge-v1+json"),
    ] {
        let r = c.post(path, ct, &json!({"name": "old"}));
        assert_eq!(r.status, 406, "{ct}");
    }
    let p = c.post(
        &format!("/routers/{}/ports", f.provider),
        "application/vnd.org.midonet.Port-v2+json",
        &json!({"type": "Router", "networkAddress": "10.0.0.0", "networkLength": 30, "portAddress": "10.0.0.1"}),
    );
    assert_eq!(p.status, 406);
    assert!(f.emu.objects().bridges.is_empty());
}

#[test]
fn a_user_without_the_admin_role_logs_in_and_then_gets_401_without_a_message() {
    let emu = emulator(EmulatorOptions::default().user_without_admin_role("viewer", "pw"));
    let mut c = Client::new(&emu);
    assert_eq!(c.login("viewer", "pw").status, 200, "the login works");
    let r = c.get("/routers", ROUTERS);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("content-type"), Some(ERROR));
    // AdminOnlyAuthFilter: setErrorResponse(401, null), no WWW-Authenticate.
    assert_eq!(r.json(), json!({"message": null, "code": 401}));
    assert_eq!(r.header("www-authenticate"), None);
    // An admin is served; a wrong password is refused at login.
    let mut a = Client::new(&emu);
    assert_eq!(a.login("admin", "secret").status, 200);
    assert_eq!(a.get("/routers", ROUTERS).status, 200);
    assert_eq!(Client::new(&emu).login("viewer", "nope").status, 401);
    // With MockAuthService everyone is an admin.
    let emu = emulator(
        EmulatorOptions::default()
            .auth(AuthMode::Mock)
            .user_without_admin_role("viewer", "pw"),
    );
    let mut c = Client::new(&emu);
    assert_eq!(c.login("viewer", "pw").status, 200);
    assert_eq!(c.get("/routers", ROUTERS).status, 200);
}

#[test]
fn a_password_with_a_colon_can_never_log_in() {
    // The server splits "user:pass:word" into three parts.
    let emu = emulator(EmulatorOptions::default().user("ops", "pass:word"));
    let r = Client::new(&emu).login("ops", "pass:word");
    assert_eq!(r.status, 401);
    assert_eq!(r.message(), "Authorization header is not valid");
}

#[test]
fn application_root_lists_collections() {
    let f = fixture();
    let c = &f.client;
    let v = c.get_ok("/", "application/json");
    assert_eq!(v["version"], "v5.0");
    let base = format!("http://{}/midonet-api", f.emu.addr());
    assert_eq!(v["routers"], format!("{base}/routers"));
    assert_eq!(v["routerTemplate"], format!("{base}/routers/{{id}}"));
    assert_eq!(v["routeTemplate"], format!("{base}/routes/{{id}}"));
    assert_eq!(
        c.request("GET", "/", &[], None).status,
        200,
        "no Accept is */*"
    );
    assert_eq!(c.get("/", "text/html").status, 406);
    assert_eq!(f.emu.url(), base);
}
