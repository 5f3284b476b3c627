"""What a command shows and writes: the one emitter (`emitter`: table/JSON/CSV on stdout,
messages on stderr), files (`files`: stdin/stdout, atomic writes), figures (`plots`) and
progress bars (`progress`)."""
