//! Test fixture, never shipped: one component that is both a wasi:http
//! handler and a pulse probe, and misbehaves on request, so the tests can
//! show that pulse answers, records and keeps running whatever a guest does.
//!
//! As a handler, by path: `/trap` panics, `/spin` loops forever, `/silent`
//! returns without setting a response; anything else answers 200.
//! As a probe, by target: a URL containing `trap` panics, `spin` loops
//! forever; anything else reports status 299.

wit_bindgen::generate!({
    inline: r#"
        package pulse:fixtures;
        world faulty {
            include wasi:http/proxy@0.2.12;
            include pulse:probe/probe@0.1.0;
        }
    "#,
    path: "../../wit",
    world: "pulse:fixtures/faulty",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest as Handler;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Faulty;

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

impl Handler for Faulty {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        match request.path_with_query().unwrap_or_default().as_str() {
            "/trap" => panic!("faulty handler trapped on purpose"),
            "/spin" => spin(),
            "/silent" => {}
            _ => {
                let response = OutgoingResponse::new(Fields::new());
                let body = response.body().expect("first call");
                ResponseOutparam::set(response_out, Ok(response));
                OutgoingBody::finish(body, None).expect("empty body");
            }
        }
    }
}

impl Guest for Faulty {
    fn check(target: String, _deadline: Duration) -> Result<Report, ProbeError> {
        if target.contains("trap") {
            panic!("faulty probe trapped on purpose");
        }
        if target.contains("spin") {
            spin();
        }
        Ok(Report {
            status: 299,
            latency: 0,
        })
    }
}

export!(Faulty);
