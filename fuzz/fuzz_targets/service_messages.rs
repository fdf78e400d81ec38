//! Every service-message parser on arbitrary bytes: OPEN arguments and replies of exec, exec.io,
//! exec.attach, exec.list, copy, copy.data, forward, shutdown and info, and the framed control
//! messages (Signal, Resize, Ack, Exit, CopyResult) in any chunking.
//! They read peer input on both sides (the agent parses the host's requests, the shim the
//! agent's replies), so none may panic or allocate past what the input announces and holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmux::service::{
    AttachReply, ControlDecoder, CopyData, CopyReady, CopyRequest, ExecAttach, ExecIo, ExecList,
    ExecReply, ExecRequest, ForwardTarget, Info, ShutdownRequest,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 13 {
        0 => drop(ExecRequest::decode(body)),
        1 => drop(ExecReply::decode(body)),
        2 => drop(ExecIo::decode(body)),
        3 => drop(CopyRequest::decode(body)),
        4 => drop(CopyReady::decode(body)),
        5 => drop(CopyData::decode(body)),
        6 => drop(ForwardTarget::decode(body)),
        7 => drop(ShutdownRequest::decode(body)),
        8 => drop(Info::decode(body)),
        9 => drop(ExecAttach::decode(body)),
        10 => drop(AttachReply::decode(body)),
        11 => drop(ExecList::decode(body)),
        _ => {
            // Control messages arrive as a byte stream in any chunking.
            let chunk = usize::from(selector / 13).max(1);
            let mut decoder = ControlDecoder::new();
            for piece in body.chunks(chunk) {
                if decoder.push(piece).is_err() {
                    return;
                }
                while let Ok(Some(_)) = decoder.next_msg() {}
            }
        }
    }
});
