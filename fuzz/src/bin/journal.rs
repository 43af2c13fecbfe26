//! AFL++ target: `journal_gateway::fuzzing::journal` (see docs/reliability.md, "Fuzzing").
//! Any panic, including one a parser catches itself, is a crash, but for the known benign panic
//! of mail-parser (the driver's own panic hook counts them; an uncaught panic aborts).

fn main() {
    journal_gateway::fuzzing::count_panics();
    afl::fuzz_nohook!(|data: &[u8]| {
        journal_gateway::fuzzing::journal(data);
    });
}
