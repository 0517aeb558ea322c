%% sasl is a dependency because release_handler, which performs the hot
%% upgrade, lives in it and must run in the target node.
{application, counter,
 [{description, "relctl example: a counter to hot-upgrade"},
  {vsn, "0.0.2"},
  {modules, [counter, counter_app, counter_hooks, counter_sup]},
  {registered, [counter, counter_sup]},
  {applications, [kernel, stdlib, sasl]},
  {mod, {counter_app, []}},
  {env, []}]}.
