#!/usr/bin/perl
#
# Self-test of t/lib/DifyTest.pm and t/lib/upstream.pl: plain nginx (the
# module is loaded when DIFY_MODULE is set, but not used), the recording
# upstream, the clients, Redis control, nginx -t, reload and teardown.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use DifyTest qw(uuid route envelope ids_body build_request);

my $t = DifyTest->new;

# proxy_http_version 1.0: one upstream connection per request, as nginx
# did by default before 1.29.7 (keepalive to upstreams by default since),
# so that upstream_connections counts the same on every nginx
$t->start_nginx(server => q{
    location / {
        proxy_http_version 1.0;
        proxy_pass http://upstream;
    }
    location = /204 {
        return 204;
    }
});

# helpers
like uuid(1), qr/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
    'uuid() is a UUID';
isnt uuid(1), uuid(2), 'uuid() differs by argument';
is envelope(400, 'invalid_action', 'Invalid action.'),
    '{"status": 400, "code": "invalid_action", "message": "Invalid action."}',
    'envelope()';
is route('d', 'enable'), '/v1/datasets/d/documents/status/enable', 'route()';

# HTTP::Tiny, exact bytes through the recording upstream
my $body = "{\"a\":\x00\xff\r\n}";
my $r = $t->request('PATCH', '/v1/x?a=b&c=%2F',
    headers => { 'Content-Type' => 'application/json',
                 Authorization => 'Bearer k' },
    body => $body);
$t->pass_ok($r, method => 'PATCH', uri => '/v1/x?a=b&c=%2F', body => $body,
    headers => { Authorization => 'Bearer k',
                 'Content-Type' => 'application/json' },
    name => 'HTTP::Tiny PATCH recorded byte for byte');

# raw client, chunked body: the upstream gets it de-chunked
$r = $t->http('PATCH', '/c', headers => [ 'Content-Type' => 'text/plain' ],
    body => 'x' x 1000 . 'y', chunked => [ 3, 500 ]);
$t->pass_ok($r, body => 'x' x 1000 . 'y', name => 'chunked request');

# no Content-Type at all
$r = $t->http('PUT', '/n', body => 'abc');
is $r->{status}, 200, 'raw PUT';
my @u = $t->upstream_requests;
ok !exists $u[0]{hdr}{'content-type'}, 'raw request has no Content-Type';
$t->upstream_clear;

# Expect: 100-continue
$r = $t->http('PATCH', '/e', body => 'hello', expect => 1);
is $r->{status}, 200, 'Expect: 100-continue answered';
is $r->{interim}[0]{status}, 100, '100 Continue came first';
ok $r->{body_sent}, 'body sent after 100 Continue';
$t->upstream_clear;

# keep-alive and pipelining on one connection
my $c = $t->connect;
my ($h1) = build_request('GET', '/k1', keep_alive => 1);
my ($h2) = build_request('GET', '/k2');
$c->send($h1 . $h2);
my $a1 = $c->read_response;
my $a2 = $c->read_response;
is $a1 && $a1->{status}, 200, 'pipelined 1';
is $a2 && $a2->{status}, 200, 'pipelined 2';
ok $c->eof_within(DifyTest::timeout(10)), 'closed after Connection: close';
$c->close;
is_deeply [ map { $_->{uri} } $t->upstream_requests ], [ '/k1', '/k2' ],
    'upstream saw both';
is $t->upstream_connections, 2, 'upstream counted its connections';
$t->upstream_clear;

# raw bytes and parse_responses
my $all = $t->raw("GET /204 HTTP/1.1\r\nHost: x\r\n\r\n"
                . "GET /204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
my @rs = DifyTest::parse_responses($all);
is_deeply [ map { $_->{status} } @rs ], [ 204, 204 ], 'raw() + parse_responses';
$t->nothing_upstream('return 204');

# HTTP/2 (the core-Perl client, and curl)
{
    my $big = join '', map { chr(($_ * 7) % 256) } 1 .. 200_000;
    $r = $t->h2('PATCH', '/h2', headers => [ 'content-type' => 'application/json' ],
        body => '{"x":1}');
    is $r->{version}, '2', 'HTTP/2 response';
    $t->pass_ok($r, method => 'PATCH', uri => '/h2', body => '{"x":1}',
        headers => { 'Content-Type' => 'application/json' },
        name => 'HTTP/2 PATCH');
    $r = $t->h2('PUT', '/h2big', body => $big);
    $t->pass_ok($r, method => 'PUT', body => $big,
        name => 'HTTP/2 200 KB body within flow control');
    $r = $t->h2('GET', '/204');
    is $r->{status}, 204, 'HTTP/2 GET';
    $r = $t->h2('PATCH', '/204', body => $big);
    is $r->{status}, 204, 'HTTP/2: an answer before the body was read';
    ok $r->{body_sent} < length $big, 'HTTP/2: ... the body was cut short';
    $t->nothing_upstream('HTTP/2 return 204');

    my $h = $t->h2_connect;
    my @st = map { $h->request('GET', "/s$_")->{status} } 1 .. 3;
    $h->close;
    is_deeply \@st, [ 200, 200, 200 ], 'HTTP/2: three streams on one connection';
    $t->upstream_clear;
}
SKIP: {
    skip 'curl has no HTTP/2', 1 unless DifyTest::have_curl_h2();
    $r = $t->h2_curl('PATCH', '/c2', headers => { 'Content-Type' => 'application/json' },
        body => '{"y":2}');
    $t->pass_ok($r, method => 'PATCH', uri => '/c2', body => '{"y":2}',
        name => 'HTTP/2 with curl');
}

# Redis
SKIP: {
    skip 'no redis-server', 7 unless -x '/usr/bin/redis-server';
    $t->start_redis;
    is $t->redis('PING'), 'PONG', 'redis PING';
    is $t->redis('SET', 'k', 'v'), 'OK', 'redis SET';
    is $t->redis_cli('GET', 'k'), 'v', 'redis-cli GET';
    $t->pause_redis;
    ok !eval { $t->redis({ timeout => 0.5 }, 'PING'); 1 }, 'paused redis does not answer';
    $t->resume_redis;
    is $t->redis('GET', 'k'), 'v', 'resumed redis answers';
    $t->restart_redis;
    is $t->redis('GET', 'k'), undef, 'restarted redis is empty';
    $t->kill_redis;
    ok !eval { $t->redis({ timeout => 1 }, 'PING'); 1 }, 'killed redis is gone';
}

# nginx -t
my ($rc, $out) = $t->nginx_t(server => 'location / { no_such_directive; }');
isnt $rc, 0, 'nginx -t fails on a bad config';
like $out, qr/unknown directive "no_such_directive"/, 'with the message';
($rc, $out) = $t->nginx_t(server => 'location / { return 204; }');
is $rc, 0, 'nginx -t passes a good config' or diag $out;

# error_page to a dead upstream reaches the recording one (%%DEAD%%)
$t->stop_nginx;
$t->start_nginx(server => q{
    location / {
        proxy_pass http://%%DEAD%%;
        error_page 502 = @up;
    }
    location @up {
        proxy_pass http://upstream;
    }
});
$t->allow_log(qr/this pattern never matches anything/);
$r = $t->request('GET', '/dead');
$t->pass_ok($r, uri => '/dead', name => '%%DEAD%% refuses, error_page recovers');

# reload
SKIP: {
    skip 'no reload in valgrind mode', 2 if $t->valgrind;
    ok $t->reload(server => 'location / { return 204; }'), 'reload';
    is $t->request('GET', '/')->{status}, 204, 'new config in force';
}

$t->done;
done_testing;
