//! The baseline of #2: a bare actix-web server answering the job route with the same JSON
//! bytes the real server sent, from memory: no key check, no read model, no logging. It runs
//! in its own process, like the real server, with the same number of workers.

use actix_web::{web, App, HttpResponse, HttpServer};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// File holding the response body.
    #[arg(long)]
    body: PathBuf,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

pub fn serve(args: Args) -> std::io::Result<()> {
    let body = web::Data::new(web::Bytes::from(std::fs::read(&args.body)?));
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new().app_data(body.clone()).route(
                "/source-connections/{source_connection_id}/jobs/{job_id}",
                web::get().to(job),
            )
        })
        .workers(args.workers.max(1))
        .bind(("127.0.0.1", args.port))?
        .run()
        .await
    })
}

async fn job(body: web::Data<web::Bytes>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body.get_ref().clone())
}
