//! A JetStream stream a test made, deleted when the test ends.

/// Deletes the test's stream when dropped, even by a panic, so failed runs leave nothing
/// behind on a shared server.
pub struct DeleteStreamOnDrop {
    pub url: String,
    pub stream: String,
}

impl Drop for DeleteStreamOnDrop {
    fn drop(&mut self) {
        let (url, stream) = (self.url.clone(), self.stream.clone());
        // Drop cannot await; a short-lived runtime on its own thread does the request.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = async_nats::connect(url.as_str()).await.ok()?;
                async_nats::jetstream::new(client)
                    .delete_stream(&stream)
                    .await
                    .ok()
            })
        })
        .join();
    }
}
