%% Application callback of 0.0.2: starts the top supervisor, and takes
%% configuration changes (after an upgrade, or `relctl reload-config`).
-module(counter_app).
-behaviour(application).

-export([start/2, stop/1, config_change/3]).

start(_Type, _Args) ->
    counter_sup:start_link().

stop(_State) ->
    ok.

%% application_controller calls this once counter's environment changed,
%% with the keys whose values changed, the new keys and the removed keys.
%% Each call is recorded in persistent_term (it survives code changes) so
%% a test can read back exactly what counter was told. Setting the key
%% refuse_config to true makes it refuse, as an application would refuse
%% a value it cannot use.
config_change(Changed, New, Removed) ->
    Calls = persistent_term:get({counter, config_changes}, []),
    persistent_term:put({counter, config_changes}, Calls ++ [{Changed, New, Removed}]),
    case application:get_env(counter, refuse_config, false) of
        true -> {error, {refused_by_counter, refuse_config}};
        _ -> ok
    end.
