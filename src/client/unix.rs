//! ureq over a unix socket: the CLI's way to the daemon's `[server] socket`.
//!
//! ureq speaks HTTP over any [`Transport`]; this one is a connected `UnixStream`. The URL's host
//! is only the `Host` header (`localhost`); the socket path says where to connect.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};
use ureq::Error;

/// Connects every request to one unix socket.
#[derive(Debug, Clone)]
pub struct UnixConnector {
    pub path: PathBuf,
}

impl<In: Transport> Connector<In> for UnixConnector {
    type Out = UnixTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        let stream = UnixStream::connect(&self.path)?;
        let config = details.config;
        Ok(Some(UnixTransport {
            stream,
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
        }))
    }
}

/// One connection to the socket.
#[derive(Debug)]
pub struct UnixTransport {
    stream: UnixStream,
    buffers: LazyBuffers,
}

/// A ureq timeout as a socket timeout; `None` waits as long as it takes (a followed log).
fn socket_timeout(timeout: &NextTimeout) -> Option<std::time::Duration> {
    timeout.not_zero().map(|d| *d)
}

impl Transport for UnixTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.stream
            .set_write_timeout(socket_timeout(&timeout.for_write()))?;
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.stream
            .set_read_timeout(socket_timeout(&timeout.for_read()))?;
        let input = self.buffers.input_append_buf();
        let amount = loop {
            match self.stream.read(input) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    /// Never reused: a CLI command makes a request or two, and an idle connection cannot be
    /// probed for staleness without reading from it.
    fn is_open(&mut self) -> bool {
        false
    }
}
