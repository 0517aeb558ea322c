import Config

# Differs from 0.0.1, so a test can see that the upgrade also applied the new sys.config.
config :ex_counter, greeting: "hello from 0.0.2"
