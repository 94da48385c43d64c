-- ARGV: name, now. An existing job is left exactly as it is.
ensure_job(ARGV[3], ARGV[4])
return {'ok'}
