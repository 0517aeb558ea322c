%% -*- erlang -*-
%% Oracle for the codec tests: OTP's own term_to_binary and binary_to_term.
%% Reads lines from stdin and answers one line each:
%%   eval <Erlang expression>  ->  hex of term_to_binary in three forms (plain, minor_version 1,
%%                                 compressed), space separated
%%   same <HexA> <HexB>        ->  true when binary_to_term(A) =:= binary_to_term(B)
main(_) ->
    ok = io:setopts(standard_io, [{encoding, unicode}, binary]),
    loop().

loop() ->
    case io:get_line(standard_io, "") of
        eof -> ok;
        Line -> answer(string:trim(unicode:characters_to_list(Line), trailing, "\n")), loop()
    end.

answer("eval " ++ Source) ->
    Term = eval(Source),
    Forms = [term_to_binary(Term), term_to_binary(Term, [{minor_version, 1}]),
             term_to_binary(Term, [compressed])],
    io:format("~s~n", [lists:join(" ", [binary:encode_hex(B) || B <- Forms])]);
answer("same " ++ Pair) ->
    [A, B] = string:split(Pair, " "),
    io:format("~p~n", [binary_to_term(binary:decode_hex(list_to_binary(A))) =:=
                       binary_to_term(binary:decode_hex(list_to_binary(B)))]).

eval(Source) ->
    {ok, Tokens, _} = erl_scan:string(Source ++ "."),
    {ok, Exprs} = erl_parse:parse_exprs(Tokens),
    {value, Value, _} = erl_eval:exprs(Exprs, []),
    Value.
