//! AFL++ target: `journal_gateway::fuzzing::pop3_client` (see docs/reliability.md, "Fuzzing").
//! Any panic, including one a parser catches itself, aborts: AFL++ records a crash.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        journal_gateway::fuzzing::pop3_client(data);
    });
}
