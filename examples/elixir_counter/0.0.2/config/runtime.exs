import Config

# Runtime configuration: mix's Config.Reader provider evaluates this on the node at boot.
# release_handler applies the build-time sys.config only; relctl's agent evaluates this again
# after the install (the upgrade's runtime_config step), as `relctl reload-config` does.
config :ex_counter, source: System.get_env("EX_COUNTER_SOURCE", "runtime.exs")
