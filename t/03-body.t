#!/usr/bin/perl
#
# How the body arrives and what runs around the check: bodies in temporary
# files, chunked bodies, HTTP/2, Expect: 100-continue, keep-alive after a
# rejection, proxy_request_buffering off, satisfy any, auth_request,
# error_page / try_files internal redirects (checked once), aborted clients;
# what orjson refuses (a byte order mark) and what the gateway's scan refuses
# before parsing (nesting past 64, more values than the budget).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use DifyTest qw(uuid route envelope ids_body build_request);

DifyTest::require_module();

my $t = DifyTest->new;

# user "u", password "p" (apr1 would need openssl; {PLAIN} is enough here)
open my $fh, '>', $t->dir . '/htpasswd' or die $!;
print $fh "u:{PLAIN}p\n";
close $fh;

$t->start_nginx(server => q{
        client_max_body_size 10m;

        location /v1 {
            dify_status on;
            proxy_pass http://upstream;
        }
        location /small/v1 {
            dify_status on;
            client_body_buffer_size 1k;
            proxy_pass http://upstream;
        }
        location /file/v1 {
            dify_status on;
            client_body_in_file_only clean;
            proxy_pass http://upstream;
        }
        location /capped/v1 {
            dify_status on;
            dify_status_max_body_size 1k;
            proxy_pass http://upstream;
        }
        location /nobuf/v1 {
            dify_status on;
            proxy_request_buffering off;
            proxy_http_version 1.1;
            proxy_pass http://upstream;
        }
        location /nobuf10/v1 {
            dify_status on;
            client_body_buffer_size 1k;
            proxy_request_buffering off;
            proxy_pass http://upstream;
        }
        location /satisfy/v1 {
            dify_status on;
            satisfy any;
            allow 127.0.0.1;
            deny all;
            auth_basic "test";
            auth_basic_user_file %%DIR%%/htpasswd;
            proxy_pass http://upstream;
        }
        location /authreq/v1 {
            dify_status on;
            auth_request /auth_ok;
            proxy_pass http://upstream;
        }
        location /authreq_deny/v1 {
            dify_status on;
            auth_request /auth_no;
            proxy_pass http://upstream;
        }
        location = /auth_ok {
            internal;
            return 204;
        }
        location = /auth_no {
            internal;
            return 403;
        }
        location /fb/v1 {
            dify_status on;
            proxy_pass http://%%DEAD%%;
            error_page 502 = @fallback;
        }
        location /fbsmall/v1 {
            dify_status on;
            client_body_buffer_size 1k;
            proxy_pass http://%%DEAD%%;
            error_page 502 = @fallback;
        }
        location /fbstrict/v1 {
            dify_status on;
            proxy_pass http://%%DEAD%%;
            error_page 502 = @strict;
        }
        location /tf/v1 {
            dify_status on;
            try_files /nonexistent @fallback;
        }
        location @fallback {
            dify_status on;
            proxy_pass http://upstream;
        }
        location @strict {
            dify_status on;
            dify_status_max_documents 1;
            proxy_pass http://upstream;
        }
        location /nocap/v1 {
            dify_status on;
            dify_status_max_documents 0;
            dify_status_max_body_size 1m;
            proxy_pass http://upstream;
        }
        location /few/v1 {
            dify_status on;
            dify_status_max_documents 3;
            proxy_pass http://upstream;
        }
});

$t->allow_log(qr/this never matches/);

my $KEY     = 'Bearer dataset-body-tests';
my $DS      = uuid(7);
my @U       = map { uuid(500 + $_) } 0 .. 1500;
my $GOOD    = ids_body(@U[0 .. 2]);
my $BIG     = ids_body(@U[0 .. 999]);                  # about 40 KB
my $MISSING = "Authorization header must be provided and start with 'Bearer'";
my $BADJSON = 'Invalid JSON payload received or JSON payload is empty.';

ok length($BIG) > 30_000, 'the big body is bigger than client_body_buffer_size';

my @JSON = ('Content-Type' => 'application/json');

sub patch {
    my ($path, $body, %o) = @_;
    my %h = (Authorization => $KEY, 'Content-Type' => 'application/json');
    $h{$_} = $o{h}{$_} for keys %{ $o{h} // {} };
    my @h = map { defined $h{$_} ? ($_ => $h{$_}) : () } sort keys %h;
    return $t->http($o{method} // 'PATCH', $path, headers => \@h,
        body => $body, chunked => $o{chunked}, expect => $o{expect},
        trickle => $o{trickle}, pieces => $o{pieces}, version => $o{version});
}

sub pass_patch {
    my ($path, $body, $name, %o) = @_;
    $t->pass_ok(patch($path, $body, %o), method => $o{method} // 'PATCH',
        uri => $path, body => $body, name => $name);
}

$t->upstream_clear;


# --- bodies in temporary files ------------------------------------------------

{
    my $small = route($DS, 'enable', '/small/v1');
    pass_patch($small, $BIG, 'a body larger than client_body_buffer_size '
        . '(temp file) passes byte for byte');
    pass_patch($small, $BIG, 'the same, chunked', chunked => [ 1, 7, 4096 ]);
    $t->reject_ok(patch($small, $BIG . ' x'), 400, 'bad_request', $BADJSON,
        'temp file: malformed at the end -> 400 bad_request');
    $t->reject_ok(patch($small, ids_body(@U[0 .. 998], 'nope')), 400,
        'invalid_param', 'document_ids[999] is not a valid UUID.',
        'temp file: a bad id at index 999 -> 400 invalid_param');
    $t->reject_ok(patch($small, substr($BIG, 0, -1) . ', "document_ids": 1}'),
        400, 'bad_request', $BADJSON,
        'temp file: a duplicate key at the end -> 400 bad_request');

    my $file = route($DS, 'enable', '/file/v1');
    pass_patch($file, $GOOD, 'client_body_in_file_only: a valid body passes');
    pass_patch($file, $BIG, 'client_body_in_file_only: a big body passes');
    $t->reject_ok(patch($file, '{"document_ids": 5}'), 400, 'invalid_param',
        'document_ids must be an array of strings.',
        'client_body_in_file_only: an invalid body is rejected');
}


# --- chunked bodies --------------------------------------------------------------

{
    my $v1 = route($DS, 'enable');
    pass_patch($v1, $GOOD, 'chunked body passes (de-chunked, same bytes)',
        chunked => 1);
    pass_patch($v1, $GOOD, 'chunked body in one-byte chunks passes',
        chunked => [ (1) x length $GOOD ]);
    pass_patch($v1, $BIG, 'a big chunked body passes', chunked => [ 100, 30000 ]);
    $t->reject_ok(patch($v1, '{"document_ids": [1]}', chunked => 1), 400,
        'invalid_param', 'document_ids[0] must be a string.',
        'chunked: invalid ids are rejected');
    $t->reject_ok(patch($v1, '', chunked => 1), 400, 'bad_request', $BADJSON,
        'chunked: an empty body -> 400 bad_request');
    $t->reject_ok(patch(route($DS, 'enable', '/capped/v1'), $BIG,
            chunked => [ 500, 500, 500 ]),
        413, 'request_entity_too_large', qr/\b1024\b/,
        'chunked: over the cap -> 413');
}


# --- HTTP/2 ------------------------------------------------------------------------

{
    my $v1 = route($DS, 'enable');
    my %auth = (Authorization => $KEY, @JSON);

    my $r = $t->h2('PATCH', $v1, headers => \%auth, body => $GOOD);
    is $r->{version}, '2', 'HTTP/2 is spoken';
    $t->pass_ok($r, method => 'PATCH', uri => $v1, body => $GOOD,
        name => 'HTTP/2: a valid request passes byte for byte');

    $r = $t->h2('PATCH', route($DS, 'enable', '/small/v1'), headers => \%auth,
        body => $BIG);
    $t->pass_ok($r, uri => route($DS, 'enable', '/small/v1'), body => $BIG,
        name => 'HTTP/2: a big body (temp file) passes byte for byte');

    $r = $t->h2('PATCH', route($DS, 'enable', '/small/v1'), headers => \%auth,
        body => $BIG, no_length => 1);
    $t->pass_ok($r, uri => route($DS, 'enable', '/small/v1'), body => $BIG,
        name => 'HTTP/2: a big body of unknown length passes byte for byte');

    $r = $t->h2('PATCH', $v1, headers => { @JSON }, body => $GOOD);
    $t->reject_ok($r, 401, 'unauthorized', $MISSING, 'HTTP/2: 401');

    $r = $t->h2('PATCH', route('nope', 'enable'), headers => \%auth,
        body => $GOOD);
    $t->reject_ok($r, 404, 'not_found', 'Dataset not found.', 'HTTP/2: 404');

    $r = $t->h2('PATCH', route($DS, 'bogus'), headers => \%auth, body => $GOOD);
    $t->reject_ok($r, 400, 'invalid_action', 'Invalid action.', 'HTTP/2: 400 '
        . 'invalid_action');

    $r = $t->h2('PATCH', $v1, headers => { Authorization => $KEY },
        body => $GOOD);
    $t->reject_ok($r, 415, 'unsupported_media_type', qr/Content-Type/,
        'HTTP/2: 415');

    $r = $t->h2('PATCH', route($DS, 'enable', '/capped/v1'), headers => \%auth,
        body => $BIG);
    $t->reject_ok($r, 413, 'request_entity_too_large', qr/\b1024\b/,
        'HTTP/2: 413 (content-length over the cap)');

    $r = $t->h2('PATCH', route($DS, 'enable', '/capped/v1'), headers => \%auth,
        body => $BIG, no_length => 1);
    $t->reject_ok($r, 413, 'request_entity_too_large', qr/\b1024\b/,
        'HTTP/2: 413 (no content-length, counted as read)');

    $r = $t->h2('PATCH', $v1, headers => \%auth, body => '{"a":1,"a":2}');
    $t->reject_ok($r, 400, 'bad_request', $BADJSON, 'HTTP/2: 400 bad_request');

    $r = $t->h2('PATCH', $v1, headers => \%auth, body => '{}');
    $t->reject_ok($r, 400, 'invalid_param', 'document_ids is required.',
        'HTTP/2: 400 invalid_param');

    $r = $t->h2('PATCH', $v1, headers => \%auth);
    $t->reject_ok($r, 400, 'bad_request', $BADJSON,
        'HTTP/2: no body at all -> 400 bad_request');

    $r = $t->h2('GET', route('nope', 'bogus'));
    $t->pass_ok($r, method => 'GET', uri => route('nope', 'bogus'),
        name => 'HTTP/2: GET passes untouched');

    # a rejection does not disturb the other streams of the connection
    my $h = $t->h2_connect;
    my $r1 = $h->request('PATCH', $v1, headers => [ @JSON ], body => $BIG);
    my $r2 = $h->request('PATCH', $v1,
        headers => [ authorization => $KEY, @JSON ], body => $GOOD);
    $h->close;
    is $r1->{status}, 401, 'HTTP/2, one connection: 401 first';
    $t->pass_ok($r2, uri => $v1, body => $GOOD,
        name => 'HTTP/2, one connection: then a valid request passes');
}

SKIP: {
    skip 'curl cannot speak HTTP/2', 1 unless DifyTest::have_curl_h2();
    my $r = $t->h2_curl('PATCH', route($DS, 'enable'),
        headers => { Authorization => $KEY, @JSON }, body => $BIG);
    $t->pass_ok($r, uri => route($DS, 'enable'), body => $BIG,
        name => 'HTTP/2 with curl: a valid request passes byte for byte');
}


# --- Expect: 100-continue ----------------------------------------------------------

{
    my $v1 = route($DS, 'enable');
    my $r = patch($v1, $GOOD, expect => 1);
    is $r->{interim}[0]{status}, 100, 'Expect: a valid request gets 100 Continue';
    $t->pass_ok($r, method => 'PATCH', uri => $v1, body => $GOOD,
        name => 'Expect: then passes byte for byte');

    $r = patch(route($DS, 'enable', '/small/v1'), $BIG, expect => 1);
    $t->pass_ok($r, uri => route($DS, 'enable', '/small/v1'), body => $BIG,
        name => 'Expect: a big body passes');

    $r = patch($v1, $GOOD, expect => 1, h => { Authorization => undef });
    $t->reject_ok($r, 401, 'unauthorized', $MISSING,
        'Expect: no Authorization -> 401');

    $r = patch($v1, '{"document_ids": "x"}', expect => 1);
    $t->reject_ok($r, 400, 'invalid_param',
        'document_ids must be an array of strings.',
        'Expect: invalid body -> 400 after 100 Continue');
    is $r->{interim}[0]{status}, 100, 'Expect: 100 Continue came first';
}


# --- keep-alive after a rejection ------------------------------------------------------

sub keepalive_pair {
    my ($bad, $name, %o) = @_;
    my ($h2, $b2) = build_request('PATCH', route($DS, 'enable'),
        headers => [ Authorization => $KEY, @JSON ], body => $GOOD,
        keep_alive => 1);
    my $c = $t->connect;
    my ($first, $second);
    if ($o{pipelined}) {
        $c->send($bad . $h2 . $b2);
        $first  = $c->read_response;
        $second = $c->read_response;
    } else {
        $c->send($bad);
        $first = $c->read_response;
        $c->send($h2 . $b2);
        $second = $c->read_response;
    }
    $c->close;

    subtest $name => sub {
        ok $first, 'first answer';
        is $first && $first->{status}, $o{status}, "first is $o{status}";
        isnt lc($first ? $first->{headers}{connection} // '' : ''), 'close',
            'first keeps the connection alive';
        ok $second, 'second answer on the same connection';
        is $second && $second->{status}, 200, 'second passes';
        my @u = $t->upstream_requests;
        is scalar @u, 1, 'the upstream got the second request only';
        is $u[0] && $u[0]{body}, $GOOD, 'byte for byte';
        $t->upstream_clear;
    };
}

{
    my $pad = ' ' x 3000;
    for my $pipelined (0, 1) {
        my $how = $pipelined ? ' (pipelined)' : '';
        my ($h, $b) = build_request('PATCH', route($DS, 'enable'),
            headers => [ @JSON ], body => $GOOD . $pad, keep_alive => 1);
        keepalive_pair($h . $b, "keep-alive after 401 with an unread body$how",
            status => 401, pipelined => $pipelined);

        ($h, $b) = build_request('PATCH', route('nope', 'enable'),
            headers => [ Authorization => $KEY, @JSON ], body => $GOOD . $pad,
            keep_alive => 1);
        keepalive_pair($h . $b, "keep-alive after 404 with an unread body$how",
            status => 404, pipelined => $pipelined);

        ($h, $b) = build_request('PATCH', route($DS, 'bogus'),
            headers => [ Authorization => $KEY, @JSON ], body => $GOOD . $pad,
            keep_alive => 1);
        keepalive_pair($h . $b,
            "keep-alive after 400 invalid_action with an unread body$how",
            status => 400, pipelined => $pipelined);

        ($h, $b) = build_request('PATCH', route($DS, 'enable'),
            headers => [ Authorization => $KEY ], body => $GOOD . $pad,
            keep_alive => 1);
        keepalive_pair($h . $b, "keep-alive after 415 with an unread body$how",
            status => 415, pipelined => $pipelined);

        ($h, $b) = build_request('PATCH', route($DS, 'enable'),
            headers => [ @JSON ], body => $GOOD . $pad, chunked => [ 5, 100 ],
            keep_alive => 1);
        keepalive_pair($h . $b,
            "keep-alive after 401 with an unread chunked body$how",
            status => 401, pipelined => $pipelined);

        ($h, $b) = build_request('PATCH', route($DS, 'enable'),
            headers => [ Authorization => $KEY, @JSON ],
            body => '{"document_ids": 1}' . $pad, keep_alive => 1);
        keepalive_pair($h . $b, "keep-alive after 400 invalid_param$how",
            status => 400, pipelined => $pipelined);
    }
}


# --- proxy_request_buffering off -----------------------------------------------------

for my $loc ('/nobuf/v1', '/nobuf10/v1') {
    my $p = route($DS, 'enable', $loc);
    pass_patch($p, $GOOD, "$loc (proxy_request_buffering off): valid passes");
    pass_patch($p, $BIG, "$loc: a big body passes byte for byte");
    pass_patch($p, $BIG, "$loc: a big chunked body passes byte for byte",
        chunked => [ 10, 20000 ]);
    $t->reject_ok(patch($p, $BIG . ']'), 400, 'bad_request', $BADJSON,
        "$loc: a big malformed body is rejected, nothing sent upstream");
    $t->reject_ok(patch($p, substr(ids_body(@U[0 .. 500]), 0, -2) . ', 5]}',
            chunked => [ 10, 9000 ]),
        400, 'invalid_param', 'document_ids[501] must be a string.',
        "$loc: a chunked invalid body is rejected, nothing sent upstream");
    $t->reject_ok(patch($p, $GOOD, h => { Authorization => undef }), 401,
        'unauthorized', $MISSING, "$loc: 401");
}


# --- access phase: satisfy any, auth_request ---------------------------------------------

{
    my $p = route($DS, 'enable', '/satisfy/v1');
    $t->reject_ok(patch($p, $GOOD, h => { Authorization => undef }), 401,
        'unauthorized', $MISSING,
        'satisfy any + allow 127.0.0.1 does not bypass the check (401)');
    $t->reject_ok(patch($p, '{"document_ids": {}}'), 400, 'invalid_param',
        'document_ids must be an array of strings.',
        'satisfy any + allow 127.0.0.1 does not bypass the body check');
    $t->reject_ok(patch(route('x', 'enable', '/satisfy/v1'), $GOOD), 404,
        'not_found', 'Dataset not found.', 'satisfy any: 404');
    pass_patch($p, $GOOD, 'satisfy any: a valid request passes');

    $p = route($DS, 'enable', '/authreq/v1');
    $t->reject_ok(patch($p, $GOOD, h => { Authorization => undef }), 401,
        'unauthorized', $MISSING, 'auth_request allows: the check still runs');
    $t->reject_ok(patch($p, '{"a":1,"a":2}'), 400, 'bad_request', $BADJSON,
        'auth_request allows: the body is still checked');
    pass_patch($p, $GOOD, 'auth_request allows: a valid request passes');
    pass_patch($p, $BIG, 'auth_request allows: a big body passes');

    $p = route($DS, 'enable', '/authreq_deny/v1');
    my $r = patch($p, $GOOD);
    is $r->{status}, 403, 'auth_request denies: 403 (access runs first)';
    $t->nothing_upstream('auth_request denies');
}


# --- internal redirects: checked once --------------------------------------------------

{
    for my $loc ('/fb/v1', '/fbsmall/v1', '/tf/v1') {
        my $p = route($DS, 'enable', $loc);
        pass_patch($p, $GOOD, "$loc: a valid request reaches the fallback once");
        pass_patch($p, $BIG, "$loc: a big body reaches the fallback byte for byte");
        pass_patch($p, $BIG, "$loc: a chunked body reaches the fallback byte for "
            . 'byte', chunked => [ 3, 10000 ]);
        $t->reject_ok(patch($p, $GOOD, h => { Authorization => undef }), 401,
            'unauthorized', $MISSING, "$loc: 401, the fallback is not reached");
        $t->reject_ok(patch($p, '{"document_ids": ["x"]}'), 400,
            'invalid_param', 'document_ids[0] is not a valid UUID.',
            "$loc: invalid_param, the fallback is not reached");
    }

    # checked once, where the request arrived: @strict's cap of 1 id does
    # not apply to a request that already passed in /fbstrict
    my $p = route($DS, 'enable', '/fbstrict/v1');
    pass_patch($p, ids_body(@U[0 .. 1]),
        'error_page to a stricter named location: not checked again');
    my $r = patch($p, ids_body(@U[0 .. 1]) . ' x');
    $t->reject_ok($r, 400, 'bad_request', $BADJSON,
        '/fbstrict: an invalid request is rejected where it arrived');
}


# --- bodies that arrive in several reads ---------------------------------------------

{
    my $v1 = route($DS, 'enable');
    my %slow = (trickle => 0.05, pieces => [ 1, 10, 100 ]);
    pass_patch($v1, $GOOD, 'a body sent in pieces passes', %slow);
    pass_patch(route($DS, 'enable', '/small/v1'), $BIG,
        'a big body sent in pieces (temp file) passes byte for byte',
        trickle => 0.05, pieces => [ 100, 1000, 9000, 20000 ]);
    pass_patch($v1, $BIG, 'a chunked body sent in pieces passes',
        chunked => [ 10, 5000 ], trickle => 0.05, pieces => [ 3, 20, 8000 ]);
    pass_patch(route($DS, 'enable', '/nobuf/v1'), $BIG,
        'proxy_request_buffering off: a body sent in pieces passes',
        trickle => 0.05, pieces => [ 100, 20000 ]);
    pass_patch(route($DS, 'enable', '/fb/v1'), $BIG,
        'error_page fallback: a body sent in pieces passes once',
        trickle => 0.05, pieces => [ 100, 20000 ]);
    $t->reject_ok(patch($v1, $GOOD . '}', %slow), 400, 'bad_request', $BADJSON,
        'a malformed body sent in pieces -> 400');
    $t->reject_ok(patch($v1, '{"document_ids": [true]}', %slow), 400,
        'invalid_param', 'document_ids[0] must be a string.',
        'an invalid body sent in pieces -> 400 invalid_param');
    $t->reject_ok(patch(route($DS, 'enable', '/capped/v1'), $BIG,
            chunked => [ 600, 600 ], trickle => 0.05, pieces => [ 300, 500, 500 ]),
        413, 'request_entity_too_large', qr/\b1024\b/,
        'a chunked body over the cap sent in pieces -> 413');

    my %auth = (Authorization => $KEY, @JSON);
    my $r = $t->h2('PATCH', $v1, headers => \%auth, body => $GOOD,
        frame => 20, pause => 0.02);
    $t->pass_ok($r, uri => $v1, body => $GOOD,
        name => 'HTTP/2: a body in many small DATA frames passes');
    $r = $t->h2('PATCH', route($DS, 'enable', '/small/v1'), headers => \%auth,
        body => $BIG, frame => 4000, pause => 0.01, no_length => 1);
    $t->pass_ok($r, uri => route($DS, 'enable', '/small/v1'), body => $BIG,
        name => 'HTTP/2: a big body in DATA frames, no length, passes');
    $r = $t->h2('PATCH', $v1, headers => \%auth, body => '{"document_ids": [1]}',
        frame => 5, pause => 0.02);
    $t->reject_ok($r, 400, 'invalid_param', 'document_ids[0] must be a string.',
        'HTTP/2: an invalid body in small DATA frames -> 400');
    $r = $t->h2('PATCH', route($DS, 'enable', '/capped/v1'), headers => \%auth,
        body => $BIG, frame => 400, pause => 0.02, no_length => 1);
    $t->reject_ok($r, 413, 'request_entity_too_large', qr/\b1024\b/,
        'HTTP/2: a body without length over the cap, in DATA frames -> 413');
}


# --- many requests at once, their bodies interleaved ------------------------------------

{
    my $v1 = route($DS, 'enable');
    my @invalid = (
        [ '{"document_ids": [',            400, 'bad_request' ],
        [ '{"document_ids": ["nope"]}',    400, 'invalid_param' ],
        [ '{"a": 1, "a": 2}',              400, 'bad_request' ],
        [ '{"document_ids": 1}',           400, 'invalid_param' ],
        [ '{}',                            400, 'invalid_param' ],
    );
    my @reqs;
    for my $i (0 .. 29) {
        if ($i % 3) {
            push @reqs, { body => ids_body($U[$i], $U[ $i + 100 ]),
                          status => 200 };
        } else {
            my $bad = $invalid[ ($i / 3) % @invalid ];
            push @reqs, { body => $bad->[0] . (' ' x $i), status => $bad->[1],
                          code => $bad->[2] };
        }
        my ($h, $b) = build_request('PATCH', $i % 2 ? $v1
                : route($DS, 'enable', '/small/v1'),
            headers => [ Authorization => $KEY, @JSON ],
            body => $reqs[-1]{body} . (' ' x 2000),
            ($i % 4 == 1 ? (chunked => [ 50, 500 ]) : ()));
        $reqs[-1]{wire} = $h . $b;
        $reqs[-1]{conn} = $t->connect;
    }
    # every head first, then the rest in rounds of 200 bytes each
    for my $off (0, map { 200 * $_ } 1 .. 15) {
        for my $q (@reqs) {
            next if $off >= length $q->{wire};
            my $n = $off == 0 ? index($q->{wire}, "\r\n\r\n") + 4 : 200;
            $q->{sent} //= 0;
            my $piece = substr $q->{wire}, $q->{sent}, $n;
            $q->{conn}->send($piece);
            $q->{sent} += length $piece;
        }
        select undef, undef, undef, 0.01;
    }
    for my $q (@reqs) {
        $q->{conn}->send(substr $q->{wire}, $q->{sent})
            if $q->{sent} < length $q->{wire};
    }
    my @bad;
    for my $i (0 .. $#reqs) {
        my $q = $reqs[$i];
        my $r = $q->{conn}->read_response;
        $q->{conn}->close;
        push @bad, "#$i: no answer" and next unless $r;
        push @bad, "#$i: $r->{status} $r->{body}"
            if $r->{status} != $q->{status}
               || ($q->{code} && ($r->{json} // {})->{code} ne $q->{code});
    }
    ok !@bad, '30 interleaved requests each get their own answer'
        or diag join "\n", @bad;
    my %want = map { ($_->{body} . (' ' x 2000)) => 1 }
               grep { $_->{status} == 200 } @reqs;
    my %got = map { $_->{body} => 1 } $t->upstream_requests;
    is scalar $t->upstream_requests, scalar keys %want,
        'the upstream got exactly the valid ones';
    is_deeply \%got, \%want, '... byte for byte';
    $t->upstream_clear;
}


# --- as Dify's parser reads it, at a bounded cost ------------------------------

# $n JSON values in all: the root, document_ids and its 3 ids, x and the rest
sub values_body {
    my ($n, $v) = @_;
    $v //= '0';
    my $k = $n - 6;
    return qq({"document_ids": ["$U[0]", "$U[1]", "$U[2]"], "x": [)
        . join(',', ($v) x $k) . ']}';
}

# x nested so that the body is $depth levels deep, the root's included
sub nested_body {
    my ($depth) = @_;
    my $k = $depth - 1;
    return qq({"document_ids": ["$U[0]"], "x": ) . ('[' x $k) . (']' x $k)
        . '}';
}

{
    my $v1 = route($DS, 'enable');
    my $BOM = "\xEF\xBB\xBF";

    # orjson refuses a UTF-8 byte order mark, so Dify would answer 400
    # itself, after its auth and dataset queries, with the key charged
    $t->reject_ok(patch($v1, $BOM . $GOOD), 400, 'bad_request', $BADJSON,
        'a body after a UTF-8 BOM -> 400 bad_request, as orjson refuses it');
    $t->reject_ok(patch($v1, $BOM . $GOOD, chunked => [ 1, 2, 50 ]), 400,
        'bad_request', $BADJSON, 'the same, chunked, the BOM split');
    $t->reject_ok(patch(route($DS, 'enable', '/small/v1'), $BOM . $BIG), 400,
        'bad_request', $BADJSON, 'the same, a big body in a temp file');
    my $r = $t->h2('PATCH', $v1, headers => { Authorization => $KEY, @JSON },
        body => $BOM . $GOOD);
    $t->reject_ok($r, 400, 'bad_request', $BADJSON, 'the same over HTTP/2');
    pass_patch($v1, qq({"document_ids": ["$U[0]"], "s": "$BOM"}),
        'U+FEFF inside a string passes');

    # a raw NUL is never JSON; jansson skips one after a number or literal
    for my $v ('1', 'true', 'null', '-0') {
        $t->reject_ok(patch($v1, qq({"document_ids": ["$U[0]"], "v": $v\0})),
            400, 'bad_request', $BADJSON,
            "a raw NUL after $v -> 400 bad_request, as orjson refuses it");
    }

    # nesting: 64 levels pass, 65 do not (a batch body has 2)
    pass_patch($v1, nested_body(64), 'a body 64 levels deep passes');
    $t->reject_ok(patch($v1, nested_body(65)), 400, 'bad_request', $BADJSON,
        'a body 65 levels deep -> 400 bad_request');
    $t->reject_ok(patch($v1, nested_body(1500)), 400, 'bad_request',
        $BADJSON, 'a body 1500 levels deep (Dify: a 500) -> 400 bad_request');
    $t->reject_ok(patch(route($DS, 'enable', '/nocap/v1'), nested_body(65)),
        400, 'bad_request', $BADJSON,
        'dify_status_max_documents 0: the depth cap still holds');

    # values: max_documents + 2 + 64, counted before anything is parsed
    my $over = 'Request body must not hold more than 1066 JSON values.';
    pass_patch($v1, values_body(1066), '1066 JSON values pass by default');
    pass_patch($v1, values_body(1066, '{}'),
        '1066 JSON values pass by default (objects)');
    $t->reject_ok(patch($v1, values_body(1067)), 413,
        'request_entity_too_large', $over,
        '1067 JSON values -> 413 request_entity_too_large');
    $t->reject_ok(patch($v1, values_body(1067, '{}'), chunked => [ 100, 900 ]),
        413, 'request_entity_too_large', $over, 'the same, chunked, objects');
    $t->reject_ok(patch(route($DS, 'enable', '/small/v1'),
            values_body(20000, '{}')), 413, 'request_entity_too_large',
        $over, 'the same, 20000 values in a temp file');
    $r = $t->h2('PATCH', $v1, headers => { Authorization => $KEY, @JSON },
        body => values_body(5000), no_length => 1);
    $t->reject_ok($r, 413, 'request_entity_too_large', $over,
        'the same over HTTP/2');
    $t->reject_ok(patch($v1, values_body(1067) . ' not JSON'), 413,
        'request_entity_too_large', $over,
        'counted before the JSON is judged (row 5 before row 6)');
    $t->reject_ok(patch($v1, ids_body(@U[0 .. 1000])), 400, 'invalid_param',
        'document_ids must not contain more than 1000 items.',
        '1001 ids are within the budget: row 7 answers');
    $t->reject_ok(patch($v1, ids_body(@U[0 .. 1064])), 413,
        'request_entity_too_large', $over,
        '1065 ids (1067 values) -> 413');
    $t->reject_ok(patch(route($DS, 'enable', '/few/v1'), values_body(70)),
        413, 'request_entity_too_large',
        'Request body must not hold more than 69 JSON values.',
        'dify_status_max_documents 3: 69 values at most');
    pass_patch(route($DS, 'enable', '/few/v1'), values_body(69),
        'dify_status_max_documents 3: 69 values pass');
    pass_patch(route($DS, 'enable', '/nocap/v1'), values_body(20000),
        'dify_status_max_documents 0: no budget');

    # the default size fits 1000 ids pretty-printed
    my $pretty = "{\n    \"document_ids\": [\n"
        . join(",\n", map { qq(        "$_") } @U[0 .. 999]) . "\n    ]\n}\n";
    ok length($pretty) > 45_000 && length($pretty) < 65_536,
        '1000 pretty-printed ids: ' . length($pretty) . ' bytes';
    pass_patch($v1, $pretty, '1000 pretty-printed ids pass at the defaults');

    # the body of issue 8: 1 MiB of {}, padding
    my $pad = qq({"document_ids": ["$U[0]"], "x": [)
        . join(',', ('{}') x 349_000) . ']}';
    $t->reject_ok(patch($v1, substr($pad, 0, 60_000) . ']}'), 413,
        'request_entity_too_large', $over,
        '60 KB of {} padding -> 413 from the value budget');
    $t->reject_ok(patch($v1, $pad), 413, 'request_entity_too_large',
        qr/\b65536 bytes\b/, '1 MiB of {} padding -> 413 from the size cap');
}


# --- other framings --------------------------------------------------------------------

{
    my $v1 = route($DS, 'enable');
    pass_patch($v1, $GOOD, 'HTTP/1.0 request passes', version => 'HTTP/1.0');
    $t->reject_ok(patch($v1, $GOOD, version => 'HTTP/1.0',
            h => { Authorization => undef }),
        401, 'unauthorized', $MISSING, 'HTTP/1.0: 401');

    my $half = int(length($GOOD) / 2);
    my $wire = "PATCH $v1 HTTP/1.1\r\nHost: localhost\r\n"
        . "Authorization: $KEY\r\nContent-Type: application/json\r\n"
        . "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        . sprintf('%x', $half) . ";ext=1;q=\"x\"\r\n" . substr($GOOD, 0, $half)
        . "\r\n" . sprintf('%X', length($GOOD) - $half) . "\r\n"
        . substr($GOOD, $half) . "\r\n0\r\nX-Trailer: t\r\n\r\n";
    my ($r) = DifyTest::parse_responses($t->raw($wire));
    $t->pass_ok($r, uri => $v1, body => $GOOD,
        name => 'chunk extensions, upper-case sizes and trailers pass');
}


# --- aborted clients ------------------------------------------------------------------

{
    my $v1 = route($DS, 'enable');
    my ($h, $b) = build_request('PATCH', $v1,
        headers => [ Authorization => $KEY, @JSON ], body => $BIG);

    my $c = $t->connect;
    $c->send($h . substr($b, 0, 1000));
    $c->close;

    $c = $t->connect;
    $c->send($h);
    $c->close;

    $c = $t->connect;
    $c->send($h . substr($b, 0, 1000));
    $c->shutdown_write;
    $c->read_all(timeout => DifyTest::timeout(10));
    $c->close;

    ($h, $b) = build_request('PATCH', route($DS, 'enable', '/small/v1'),
        headers => [ Authorization => $KEY, @JSON ], body => $BIG,
        chunked => [ 1000, 1000 ]);
    $c = $t->connect;
    $c->send($h . substr($b, 0, 2500));
    $c->close;

    ($h, $b) = build_request('PATCH', route($DS, 'enable', '/nobuf/v1'),
        headers => [ Authorization => $KEY, @JSON ], body => $BIG);
    $c = $t->connect;
    $c->send($h . substr($b, 0, 5000));
    $c->close;

    # aborted while nginx waits for the rest of the body
    for my $loc ('/v1', '/small/v1', '/fb/v1') {
        ($h, $b) = build_request('PATCH', route($DS, 'enable', $loc),
            headers => [ Authorization => $KEY, @JSON ], body => $BIG);
        $c = $t->connect;
        $c->send($h . substr($b, 0, 100));
        select undef, undef, undef, 0.05;
        $c->send(substr($b, 100, 3000));
        select undef, undef, undef, 0.05;
        $c->close;
    }

    # HTTP/2: the connection goes away in the middle of the body
    my $h2 = $t->h2_connect;
    $h2->request('PATCH', route($DS, 'enable', '/small/v1'),
        headers => [ authorization => $KEY, @JSON ], body => $BIG,
        frame => 1000, pause => 0.01, abort_after => 5000);
    $h2 = $t->h2_connect;
    $h2->request('PATCH', $v1, headers => [ authorization => $KEY, @JSON ],
        body => $BIG, frame => 1000, abort_after => 1000);

    # the worker is still fine, and nothing of the above went upstream
    my $r = patch($v1, $GOOD);
    is $r->{status}, 200, 'after aborted clients, a valid request passes';
    my @u = $t->upstream_requests;
    is scalar @u, 1, 'aborted requests never reached the upstream';
    $t->upstream_clear;
}

$t->done;
done_testing;
