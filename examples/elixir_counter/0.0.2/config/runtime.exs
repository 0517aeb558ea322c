import Config

# Runtime configuration: mix's Config.Reader provider evaluates this on the node at boot, and
# `relctl reload-config` evaluates it there again. A hot upgrade alone does not (release_handler
# applies the build-time sys.config only), which a test shows and reload-config mends.
config :ex_counter, source: System.get_env("EX_COUNTER_SOURCE", "runtime.exs")
