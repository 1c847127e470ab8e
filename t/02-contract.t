#!/usr/bin/perl
#
# Rows 1-7 of the contract (/work/shared/contract.md), against the real
# nginx in front of the recording upstream: exact status, body, headers and
# order of the checks; every rejection leaves the upstream untouched, every
# pass reaches it byte for byte; other methods and paths pass untouched.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use DifyTest qw(uuid route envelope ids_body);

DifyTest::require_module();

my $t = DifyTest->new;

$t->start_nginx(http => q{
    client_max_body_size 10m;

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name localhost;

        location /v1 {
            dify_status on;
            proxy_pass http://upstream;
        }
        location /capped/v1 {
            dify_status on;
            dify_status_max_body_size 1k;
            dify_status_max_documents 3;
            proxy_pass http://upstream;
        }
        location /dups/v1 {
            dify_status on;
            dify_status_duplicate_ids reject;
            proxy_pass http://upstream;
        }
        location /any/v1 {
            dify_status on;
            dify_status_document_ids any;
            proxy_pass http://upstream;
        }
        location /nocap/v1 {
            dify_status on;
            dify_status_max_documents 0;
            proxy_pass http://upstream;
        }
        location /off/v1 {
            dify_status off;
            proxy_pass http://upstream;
        }
        location /default/v1 {
            proxy_pass http://upstream;
        }
        location /old/ {
            rewrite ^/old/(.*)$ /v1/$1 last;
        }
    }

    server {
        listen 127.0.0.1:%%PORT2%%;
        server_name localhost;

        dify_status on;
        dify_status_max_documents 2;

        location / {
            proxy_pass http://upstream;
        }
        location /off/ {
            dify_status off;
            proxy_pass http://upstream;
        }
    }
});

my $KEY  = 'Bearer dataset-0123456789abcdefABCDEF';
my $DS   = uuid(1);
my @U    = map { uuid(100 + $_) } 0 .. 1500;
my $GOOD = ids_body(@U[0 .. 2]);

my $MISSING = "Authorization header must be provided and start with 'Bearer'";
my $SCHEME  = "Authorization scheme must be 'Bearer'";
my $BADJSON = 'Invalid JSON payload received or JSON payload is empty.';

# A PATCH with good defaults: h => { Header => value | undef (left out) }
sub patch {
    my ($path, $body, %o) = @_;
    my %h = (Authorization => $KEY, 'Content-Type' => 'application/json');
    $h{$_} = $o{h}{$_} for keys %{ $o{h} // {} };
    my @h = map { defined $h{$_} ? ($_ => $h{$_}) : () } sort keys %h;
    return $t->http($o{method} // 'PATCH', $path, headers => \@h,
        body => $body, port => $o{port}, chunked => $o{chunked});
}

sub pass_patch {
    my ($path, $body, $name, %o) = @_;
    my $r = patch($path, $body, %o);
    $t->pass_ok($r, method => $o{method} // 'PATCH', uri => $path,
        body => $body // '', name => $name);
}

sub pad {
    my ($json, $size) = @_;
    die "too long" if length $json > $size;
    return $json . (' ' x ($size - length $json));
}

$t->upstream_clear;


# --- a valid request passes byte for byte ----------------------------

{
    my $path = route($DS, 'enable');
    my $body = "\n\t{ \"document_ids\" :\r\n [ \"$U[0]\" ,\"$U[1]\"] , "
             . "\"extra\": {\"n\": [1, 2.5e3, null, true], \"s\": \"h\\u00e9\"} }\n ";
    my $r = patch($path, $body);
    $t->pass_ok($r, method => 'PATCH', uri => $path, body => $body,
        headers => { Authorization => $KEY,
                     'Content-Type' => 'application/json',
                     'Content-Length' => length $body },
        name => 'valid request: upstream gets method, URI, headers, body '
              . 'byte for byte');
    is $r->{headers}{'content-type'}, 'application/json',
        'the upstream\'s response comes back';

    for my $action (qw(enable disable archive un_archive)) {
        pass_patch(route($DS, $action), $GOOD, "action $action passes");
    }
    pass_patch(route(uc $DS, 'enable'), $GOOD, 'upper-case dataset UUID passes');
    pass_patch(route($DS, 'enable'), ids_body(map { uc } @U[0 .. 2]),
        'upper-case document UUIDs pass');
    pass_patch(route($DS, 'enable') . '?x=1&dataset_id=bad', $GOOD,
        'query string is not part of the route and is forwarded');
    pass_patch(route($DS, 'enable'), '{"document_ids": ["\u0031'
        . substr($U[1], 1) . '"]}', 'escaped characters in an id pass'
        ) if substr($U[1], 0, 1) eq '1';
    pass_patch(route($DS, 'enable'),
        qq({"document_ids": ["$U[0]"], "note": "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80"}),
        'valid multi-byte UTF-8 passes');
    pass_patch(route($DS, 'enable'), ids_body(@U[0 .. 2], $U[0]),
        'duplicate ids pass by default (dify_status_duplicate_ids allow)');
}


# --- row 1: dataset_id is a UUID -> 404 -------------------------------

{
    (my $nodash = $DS) =~ tr/-//d;
    my @bad = ('not-a-uuid', '123', $nodash, substr($DS, 1),
               $DS . '0', 'g' . substr($DS, 1), "%7B$DS%7D",
               substr($DS, 0, 8) . '_' . substr($DS, 9),
               "$DS%20", 'x' x 36);
    for my $ds (@bad) {
        $t->reject_ok(patch(route($ds, 'enable'), $GOOD), 404, 'not_found',
            'Dataset not found.', "row 1: dataset \"$ds\" -> 404");
    }

    $t->reject_ok(patch(route('not-a-uuid', 'enable'), $GOOD,
            h => { Authorization => undef }),
        404, 'not_found', 'Dataset not found.',
        'order: non-UUID dataset and no Authorization -> 404');
    $t->reject_ok(patch(route('not-a-uuid', 'bogus'), '{',
            h => { Authorization => 'Basic x', 'Content-Type' => 'text/plain' }),
        404, 'not_found', 'Dataset not found.',
        'order: non-UUID dataset, bad scheme, bad action, bad type, bad body -> 404');

    # matched on the percent-decoded $uri: an encoded dash is still a UUID
    (my $enc = $DS) =~ s/-/%2D/;
    pass_patch(route($enc, 'enable'), $GOOD,
        'dataset with a percent-encoded dash is a UUID (raw URI forwarded)');
}


# --- row 2: Authorization -> 401 ----------------------------------------

{
    my @cases = (
        [ undef,                      $MISSING, 'absent' ],
        [ '',                         $MISSING, 'empty' ],
        [ 'Bearer',                   $MISSING, '"Bearer" without a token' ],
        [ 'Bearer   ',                $MISSING, '"Bearer" and trailing spaces' ],
        [ 'dataset-abcdef',           $MISSING, 'a token without a scheme' ],
        [ "Bearer\tdataset-abcdef",   $MISSING, 'a tab instead of a space' ],
        [ 'Basic dXNlcjpwYXNz',       $SCHEME,  'Basic scheme' ],
        [ 'Token dataset-abcdef',     $SCHEME,  'Token scheme' ],
        [ 'Bearerx dataset-abcdef',   $SCHEME,  'scheme "Bearerx"' ],
        [ 'Bearer: dataset-abcdef',   $SCHEME,  'scheme "Bearer:"' ],
    );
    for my $c (@cases) {
        my ($v, $msg, $what) = @$c;
        $t->reject_ok(patch(route($DS, 'enable'), $GOOD,
                h => { Authorization => $v }),
            401, 'unauthorized', $msg, "row 2: Authorization $what -> 401");
    }

    for my $v ('bearer dataset-abc', 'BEARER dataset-abc', 'bEaReR dataset-abc',
               'Bearer  dataset-abc', 'Bearer dataset-abc more', 'Bearer x')
    {
        pass_patch(route($DS, 'enable'), $GOOD,
            "Authorization \"$v\" passes", h => { Authorization => $v });
    }

    $t->reject_ok(patch(route($DS, 'bogus'), $GOOD,
            h => { Authorization => undef }),
        401, 'unauthorized', $MISSING,
        'order: bad action and no Authorization -> 401');
    $t->reject_ok(patch(route($DS, 'bogus'), $GOOD,
            h => { Authorization => 'Basic abc' }),
        401, 'unauthorized', $SCHEME,
        'order: bad action and Basic scheme -> 401 (scheme message)');
    $t->reject_ok(patch(route($DS, 'enable'), $GOOD,
            h => { Authorization => undef, 'Content-Type' => 'text/plain' }),
        401, 'unauthorized', $MISSING,
        'order: bad Content-Type and no Authorization -> 401');
    $t->reject_ok(patch(route($DS, 'enable', '/capped/v1'), pad($GOOD, 2000),
            h => { Authorization => undef }),
        401, 'unauthorized', $MISSING,
        'order: body over the cap and no Authorization -> 401');
    $t->reject_ok(patch(route($DS, 'enable'), '{',
            h => { Authorization => undef }),
        401, 'unauthorized', $MISSING,
        'order: malformed JSON and no Authorization -> 401');
    $t->reject_ok(patch(route($DS, 'enable'), '{}',
            h => { Authorization => 'Token x' }),
        401, 'unauthorized', $SCHEME,
        'order: missing document_ids and bad scheme -> 401');
}


# --- row 3: action -> 400 invalid_action ----------------------------------

{
    for my $a ('Enable', 'ENABLE', 'delete', 'unarchive', 'un-archive',
               'enable.json', 'enable%20', 'un_archive2', 'enabl', '%45nable')
    {
        $t->reject_ok(patch(route($DS, $a), $GOOD), 400, 'invalid_action',
            'Invalid action.', "row 3: action \"$a\" -> 400 invalid_action");
    }

    my $r = patch(route($DS, 'bogus'), $GOOD);
    is $r->{body},
        '{"status": 400, "code": "invalid_action", "message": "Invalid action."}',
        'row 3: the documented body, byte for byte';
    $t->upstream_clear;

    pass_patch(route($DS, '%65nable'), $GOOD,
        'percent-encoded "enable" is enable (raw URI forwarded)');

    $t->reject_ok(patch(route($DS, 'bogus'), $GOOD,
            h => { 'Content-Type' => 'text/plain' }),
        400, 'invalid_action', 'Invalid action.',
        'order: bad action and bad Content-Type -> 400 invalid_action');
    $t->reject_ok(patch(route($DS, 'bogus'), $GOOD,
            h => { 'Content-Type' => undef }),
        400, 'invalid_action', 'Invalid action.',
        'order: bad action and no Content-Type -> 400 invalid_action');
    $t->reject_ok(patch(route($DS, 'bogus', '/capped/v1'), pad($GOOD, 2000)),
        400, 'invalid_action', 'Invalid action.',
        'order: bad action and body over the cap -> 400 invalid_action');
    $t->reject_ok(patch(route($DS, 'bogus'), '{'),
        400, 'invalid_action', 'Invalid action.',
        'order: bad action and malformed JSON -> 400 invalid_action');
}


# --- row 4: Content-Type / Content-Encoding -> 415 --------------------------

{
    my $ct = qr/Content-Type/;
    my $ce = qr/Content-Encoding/;
    my @cases = (
        [ { 'Content-Type' => undef }, $ct, 'no Content-Type' ],
        [ { 'Content-Type' => '' }, $ct, 'an empty Content-Type' ],
        [ { 'Content-Type' => 'text/plain' }, $ct, 'text/plain' ],
        [ { 'Content-Type' => 'application/x-www-form-urlencoded' }, $ct,
          'a form' ],
        [ { 'Content-Type' => 'multipart/form-data; boundary=x' }, $ct,
          'multipart' ],
        [ { 'Content-Type' => 'application/jsonx' }, $ct, 'application/jsonx' ],
        [ { 'Content-Type' => 'application/x-json' }, $ct, 'application/x-json' ],
        [ { 'Content-Type' => 'text/json' }, $ct, 'text/json' ],
        [ { 'Content-Type' => 'json' }, $ct, '"json"' ],
        [ { 'Content-Type' => 'text/plain+json' }, $ct, 'text/plain+json' ],
        [ { 'Content-Encoding' => 'gzip' }, $ce, 'Content-Encoding: gzip' ],
        [ { 'Content-Encoding' => 'deflate' }, $ce, 'Content-Encoding: deflate' ],
        [ { 'Content-Encoding' => 'br' }, $ce, 'Content-Encoding: br' ],
    );
    for my $c (@cases) {
        my ($h, $re, $what) = @$c;
        $t->reject_ok(patch(route($DS, 'enable'), $GOOD, h => $h),
            415, 'unsupported_media_type', $re, "row 4: $what -> 415");
    }

    for my $v ('application/json; charset=utf-8', 'application/json;charset=UTF-8',
               'application/vnd.x+json', 'application/merge-patch+json',
               'APPLICATION/JSON', 'Application/Vnd.Api+Json; charset=utf-8')
    {
        pass_patch(route($DS, 'enable'), $GOOD, "Content-Type \"$v\" passes",
            h => { 'Content-Type' => $v });
    }
    pass_patch(route($DS, 'enable'), $GOOD, 'Content-Encoding: identity passes',
        h => { 'Content-Encoding' => 'identity' });

    $t->reject_ok(patch(route($DS, 'enable', '/capped/v1'), pad($GOOD, 2000),
            h => { 'Content-Type' => 'text/plain' }),
        415, 'unsupported_media_type', $ct,
        'order: bad Content-Type and body over the cap -> 415');
    $t->reject_ok(patch(route($DS, 'enable', '/capped/v1'), pad($GOOD, 2000),
            h => { 'Content-Encoding' => 'gzip' }),
        415, 'unsupported_media_type', $ce,
        'order: Content-Encoding and body over the cap -> 415');
    $t->reject_ok(patch(route($DS, 'enable'), '{',
            h => { 'Content-Type' => 'text/plain' }),
        415, 'unsupported_media_type', $ct,
        'order: bad Content-Type and malformed JSON -> 415');
}


# --- row 5: body over the cap -> 413 -----------------------------------------

{
    my $capped = route($DS, 'enable', '/capped/v1');
    my $cap_re = qr/\b1024\b/;

    $t->reject_ok(patch($capped, pad($GOOD, 1025)), 413,
        'request_entity_too_large', $cap_re,
        'row 5: Content-Length 1025 over a 1k cap -> 413 naming 1024 bytes');
    pass_patch($capped, pad($GOOD, 1024), 'a body of exactly the cap passes');

    $t->reject_ok(patch($capped, pad($GOOD, 2000), chunked => [ 100, 500 ]),
        413, 'request_entity_too_large', $cap_re,
        'row 5: chunked body over the cap -> 413');
    pass_patch($capped, pad($GOOD, 1024), 'a chunked body of exactly the cap '
        . 'passes', chunked => [ 1, 1000 ]);

    $t->reject_ok(patch($capped, pad('{', 2000)), 413,
        'request_entity_too_large', $cap_re,
        'order: body over the cap and malformed -> 413');
    $t->reject_ok(patch($capped, pad('{', 2000), chunked => 1), 413,
        'request_entity_too_large', $cap_re,
        'order: chunked body over the cap and malformed -> 413');
    $t->reject_ok(patch($capped, pad('{}', 2000)), 413,
        'request_entity_too_large', $cap_re,
        'order: body over the cap and no document_ids -> 413');

    # answered at once, from the headers alone
    for my $expect (0, 1) {
        my $what = $expect ? 'with Expect: 100-continue' : 'headers only';
        my $c = $t->connect;
        $c->send("PATCH $capped HTTP/1.1\r\nHost: localhost\r\n"
            . "Authorization: $KEY\r\nContent-Type: application/json\r\n"
            . "Content-Length: 5000\r\n"
            . ($expect ? "Expect: 100-continue\r\n" : '') . "\r\n");
        my $r = $c->read_response(keep_interim => 1);
        ok $r, "row 5 ($what): answered before any body byte was sent"
            or next;
        $t->reject_ok($r, 413, 'request_entity_too_large', $cap_re,
            "row 5 ($what): the first answer is the 413 (no 100 Continue)");
        is lc($r->{headers}{connection} // ''), 'close',
            "row 5 ($what): the 413 says Connection: close";
        $c->shutdown_write;
        ok $c->eof_within(DifyTest::timeout(10)),
            "row 5 ($what): the connection is closed after the 413";
        $c->close;
    }
    $t->nothing_upstream('413 from headers');

    # the default cap is 64k, room for 1000 pretty-printed ids
    my $v1 = route($DS, 'enable');
    $t->reject_ok(patch($v1, pad($GOOD, 65537)), 413,
        'request_entity_too_large', qr/\b65536\b/,
        'row 5: default cap 64k: 65537 bytes -> 413 naming 65536 bytes');
    pass_patch($v1, pad($GOOD, 65536), 'default cap 64k: 65536 bytes pass');
}


# --- row 6: not a JSON object -> 400 bad_request ------------------------------

{
    my $u = $U[0];
    my @cases = (
        [ '{',                                        'truncated JSON' ],
        [ '',                                         'an empty body' ],
        [ undef,                                      'no body at all' ],
        [ '   ',                                      'only whitespace' ],
        [ '[]',                                       'an array' ],
        [ qq(["$u"]),                                 'an array of ids' ],
        [ '"document_ids"',                           'a string' ],
        [ '1',                                        'a number' ],
        [ 'null',                                     'null' ],
        [ 'true',                                     'true' ],
        [ qq({"document_ids": ["$u"]} x),             'trailing garbage' ],
        [ qq({"document_ids": ["$u"]}{}),             'two objects' ],
        [ qq({"document_ids": ["$u"],}),              'a trailing comma' ],
        [ qq({'document_ids': ['$u']}),               'single quotes' ],
        [ qq({document_ids: ["$u"]}),                 'an unquoted key' ],
        [ qq({"document_ids":["$u"],"document_ids":5}),
          'duplicate key document_ids (the last is bad)' ],
        [ qq({"document_ids":5,"document_ids":["$u"]}),
          'duplicate key document_ids (the last is good)' ],
        [ qq({"document_ids":["$u"],"document_ids":["$u"]}),
          'duplicate key document_ids (equal values)' ],
        [ qq({"document_ids":["$u"],"document\\u005fids":5}),
          'duplicate key spelled with an escape' ],
        [ qq({"a":1,"a":1,"document_ids":["$u"]}),    'another duplicate key' ],
        [ qq({"document_ids":["$u"],"x":{"k":1,"k":2}}), 'a nested duplicate key' ],
        [ qq({"document_ids":["$u"],"x":[{"k":1},{"k":2,"k":3}]}),
          'a duplicate key in an array of objects' ],
        [ qq({"document_ids":["$u"],"x":"\xff"}),     'invalid UTF-8 (0xff)' ],
        [ qq({"document_ids":["$u"],"x":"\xc0\xaf"}), 'overlong UTF-8' ],
        [ qq({"document_ids":["$u"],"x":"\xe2\x82"}), 'a truncated UTF-8 sequence' ],
        [ qq({"document_ids":["$u"],"x":"\xed\xa0\x80"}), 'a UTF-8 encoded surrogate' ],
        [ qq({"document_ids":["$u"],"x\xfe":1}),      'invalid UTF-8 in a key' ],
        [ qq({"document_ids":["$u\xff"]}),            'invalid UTF-8 in an id' ],
    );
    for my $c (@cases) {
        my ($body, $what) = @$c;
        $t->reject_ok(patch(route($DS, 'enable'), $body), 400, 'bad_request',
            $BADJSON, "row 6: $what -> 400 bad_request");
    }
    $t->reject_ok(patch(route($DS, 'enable'), '{"a":', chunked => 1),
        400, 'bad_request', $BADJSON, 'row 6: malformed chunked body -> 400');
    $t->reject_ok(patch(route($DS, 'enable'), '{"x":1,"x":2}'),
        400, 'bad_request', $BADJSON,
        'order: duplicate key and no document_ids -> bad_request');
}


# --- row 7: document_ids -> 400 invalid_param --------------------------------

{
    my $v1 = route($DS, 'enable');
    my ($u0, $u1, $u2) = @U[0 .. 2];
    (my $nodash = $u1) =~ tr/-//d;
    my @cases = (
        [ '{}',                             'document_ids is required.' ],
        [ '{"other": []}',                  'document_ids is required.' ],
        [ qq({"Document_ids": ["$u0"]}),    'document_ids is required.' ],
        [ qq({"document_ids ": ["$u0"]}),   'document_ids is required.' ],
        [ qq({"document_ids": "$u0"}),      'document_ids must be an array of strings.' ],
        [ '{"document_ids": {}}',           'document_ids must be an array of strings.' ],
        [ qq({"document_ids": {"0": "$u0"}}), 'document_ids must be an array of strings.' ],
        [ '{"document_ids": 5}',            'document_ids must be an array of strings.' ],
        [ '{"document_ids": true}',         'document_ids must be an array of strings.' ],
        [ qq({"document_ids": ["$u0","$u1","$u2",5]}),      'document_ids[3] must be a string.' ],
        [ qq({"document_ids": ["$u0","$u1","$u2",null]}),   'document_ids[3] must be a string.' ],
        [ qq({"document_ids": ["$u0","$u1","$u2",["x"]]}),  'document_ids[3] must be a string.' ],
        [ qq({"document_ids": ["$u0","$u1","$u2",{}]}),     'document_ids[3] must be a string.' ],
        [ qq({"document_ids": ["$u0","$u1","$u2",false]}),  'document_ids[3] must be a string.' ],
        [ '{"document_ids": [5]}',          'document_ids[0] must be a string.' ],
        [ qq({"document_ids": ["$u0","$u1","$u2","nope"]}), 'document_ids[3] is not a valid UUID.' ],
        [ qq({"document_ids": ["$u0","$u1","$u2",""]}),     'document_ids[3] is not a valid UUID.' ],
        [ qq({"document_ids": ["$u0","$u1","$u2","{$u0}"]}), 'document_ids[3] is not a valid UUID.' ],
        [ qq({"document_ids": ["$u0","$u1","$u2","$nodash"]}), 'document_ids[3] is not a valid UUID.' ],
        [ qq({"document_ids": ["$u0","$u1","$u2"," $u1"]}), 'document_ids[3] is not a valid UUID.' ],
        [ qq({"document_ids": ["$u0","$u1","$u2","${u1}0"]}), 'document_ids[3] is not a valid UUID.' ],
        [ qq({"document_ids": ["$u0","$u1","$u2","g) . substr($u1, 1) . '"]}',
          'document_ids[3] is not a valid UUID.' ],
        [ ids_body(@U[0 .. 10], 'x'),       'document_ids[11] is not a valid UUID.' ],
    );
    for my $c (@cases) {
        my ($body, $msg) = @$c;
        $t->reject_ok(patch($v1, $body), 400, 'invalid_param', $msg,
            "row 7: $msg");
    }

    # the item cap
    my $capped = route($DS, 'enable', '/capped/v1');
    $t->reject_ok(patch($capped, ids_body(@U[0 .. 3])), 400, 'invalid_param',
        'document_ids must not contain more than 3 items.',
        'row 7: 4 ids over dify_status_max_documents 3');
    pass_patch($capped, ids_body(@U[0 .. 2]), '3 ids within a cap of 3 pass');

    $t->reject_ok(patch($v1, ids_body(@U[0 .. 1000])), 400, 'invalid_param',
        'document_ids must not contain more than 1000 items.',
        'row 7: 1001 ids over the default cap of 1000');
    pass_patch($v1, ids_body(@U[0 .. 999]), '1000 ids pass by default');
    pass_patch(route($DS, 'enable', '/nocap/v1'), ids_body(@U[0 .. 1500]),
        'dify_status_max_documents 0: 1501 ids pass');

    # duplicates
    my $dups = route($DS, 'enable', '/dups/v1');
    $t->reject_ok(patch($dups, ids_body(@U[0 .. 4], $U[2])), 400,
        'invalid_param', 'document_ids[5] duplicates document_ids[2].',
        'row 7: duplicate id with dify_status_duplicate_ids reject');
    $t->reject_ok(patch($dups, ids_body(@U[0 .. 4], uc $U[2])), 400,
        'invalid_param', 'document_ids[5] duplicates document_ids[2].',
        'row 7: duplicate ids compare case-insensitively');
    pass_patch($dups, ids_body(@U[0 .. 5]), 'no duplicates pass under reject');
    pass_patch($v1, ids_body(@U[0 .. 4], $U[2]),
        'the same duplicate passes where duplicates are allowed');

    # any
    my $any = route($DS, 'enable', '/any/v1');
    pass_patch($any, '{"document_ids": ["nope", "", "x y", "' . $U[0] . '"]}',
        'dify_status_document_ids any: non-UUID strings pass');
    $t->reject_ok(patch($any, '{"document_ids": ["a", 5]}'), 400,
        'invalid_param', 'document_ids[1] must be a string.',
        'dify_status_document_ids any: a number is still not a string');
    $t->reject_ok(patch($any, '{}'), 400, 'invalid_param',
        'document_ids is required.', 'dify_status_document_ids any: required');
    $t->reject_ok(patch($any, '{"document_ids": "x"}'), 400, 'invalid_param',
        'document_ids must be an array of strings.',
        'dify_status_document_ids any: must be an array');
}


# --- other methods and paths pass untouched -----------------------------------

{
    my $bad = route('not-a-uuid', 'bogus');
    for my $m (qw(POST PUT DELETE OPTIONS)) {
        pass_patch($bad, '{', "$m with everything invalid passes untouched",
            method => $m,
            h => { Authorization => undef, 'Content-Type' => 'text/plain' });
        pass_patch(route($DS, 'enable'), pad('{', 5000),
            "$m to a valid route with a bad body passes untouched",
            method => $m, h => { Authorization => undef });
    }
    my $r = $t->http('GET', route($DS, 'enable'));
    $t->pass_ok($r, method => 'GET', uri => route($DS, 'enable'), body => '',
        name => 'GET without Authorization passes untouched');

    my @paths = (
        route($DS, 'enable') . '/',
        route($DS, 'enable') . '/x',
        route($DS, 'enable') . '//',
        "/v1/datasets/$DS/documents/status",
        "/v1/datasets/$DS/documents/status/",
        "/v1/datasets/$DS/documents/enable",
        "/v1/datasets/$DS/documents",
        "/v1/datasets/$DS",
        '/v1/datasets',
        "/v1/Datasets/$DS/documents/status/enable",
        "/v1/datasets/$DS/Documents/status/enable",
        "/v1/datasets/$DS/documents/Status/enable",
        "/v1/xdatasets/$DS/documents/status/enable",
        "/v1/datasets/$DS/xdocuments/status/enable",
        "/v1/datasets/$DS/documents/status/enable/documents/status",
    );
    for my $p (@paths) {
        pass_patch($p, '{', "PATCH $p passes untouched",
            h => { Authorization => undef, 'Content-Type' => 'text/plain' });
    }

    pass_patch(route('not-a-uuid', 'bogus', '/off/v1'), '{',
        'dify_status off: everything passes',
        h => { Authorization => undef, 'Content-Type' => 'text/plain' });
    pass_patch(route('not-a-uuid', 'bogus', '/default/v1'), '{',
        'no dify_status (default off): everything passes',
        h => { Authorization => undef, 'Content-Type' => 'text/plain' });
    pass_patch(route($DS, 'enable', '/off/v1'), pad('{', 2_000_000),
        'dify_status off: a 2 MB invalid body passes',
        h => { 'Content-Encoding' => 'gzip' });
}


# --- the route is matched on the normalised $uri --------------------------------

{
    my @paths = (
        "/v1//datasets/$DS//documents/status/enable",
        "/v1/datasets/$DS/documents/x/../status/enable",
        "/v1/./datasets/$DS/documents/./status/enable",
        "/v1/datasets/$DS/documents%2Fstatus/enable",
        "/v1/%64atasets/$DS/documents/status/enable",
        route($DS, 'enable') . '?document_ids=1',
        "/v1/api/datasets/$DS/documents/status/enable",
    );
    for my $p (@paths) {
        $t->reject_ok(patch($p, $GOOD, h => { Authorization => undef }),
            401, 'unauthorized', $MISSING, "PATCH $p is checked");
    }

    # after a rewrite, the URI that goes upstream is the one checked
    $t->reject_ok(patch(route('nope', 'enable', '/old'), $GOOD), 404,
        'not_found', 'Dataset not found.', 'rewrite ... last: the new URI is checked');
    my $r = patch(route($DS, 'enable', '/old'), $GOOD);
    $t->pass_ok($r, uri => route($DS, 'enable'), body => $GOOD,
        name => 'rewrite ... last: a valid request passes with the new URI');
}


# --- scopes: server level, http level ----------------------------------------------

{
    my $port2 = $t->port('PORT2');
    my $r = patch(route($DS, 'enable', '/api/v1'), ids_body(@U[0 .. 2]),
        port => $port2);
    $t->reject_ok($r, 400, 'invalid_param',
        'document_ids must not contain more than 2 items.',
        'server-level dify_status on and max_documents 2 are inherited');
    $r = patch(route($DS, 'enable', ''), $GOOD, port => $port2,
        h => { Authorization => undef });
    $t->reject_ok($r, 401, 'unauthorized', $MISSING,
        'an empty prefix (/datasets/...) is the route too');
    $r = patch(route($DS, 'enable', '/api/v1'), ids_body(@U[0 .. 1]),
        port => $port2);
    $t->pass_ok($r, uri => route($DS, 'enable', '/api/v1'),
        body => ids_body(@U[0 .. 1]), name => 'server level: valid passes');
    $r = patch(route('x', 'y', '/off'), '{', port => $port2,
        h => { Authorization => undef });
    $t->pass_ok($r, uri => route('x', 'y', '/off'), body => '{',
        name => 'location dify_status off overrides the server level');
}

$t->stop_nginx;
$t->start_nginx(http => q{
    dify_status on;
    dify_status_max_body_size 200;

    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            proxy_pass http://upstream;
        }
    }
});

{
    $t->reject_ok(patch(route('nope', 'enable'), $GOOD), 404, 'not_found',
        'Dataset not found.', 'http-level dify_status on is inherited');
    $t->reject_ok(patch(route($DS, 'enable'), pad($GOOD, 201)), 413,
        'request_entity_too_large', qr/\b200\b/,
        'http-level dify_status_max_body_size is inherited');
    pass_patch(route($DS, 'enable'), pad($GOOD, 200),
        'http level: a valid request passes');
}

$t->done;
done_testing;
