#!/usr/bin/perl
#
# Entries of the phase handler after the first: error_page to a named
# location (with "=" and with "=200"), to a plain URI (which turns the
# PATCH into a GET), to a location where dify_status is off, with
# recursive_error_pages off and on; post_action; the limiter's resume.
# The causes: bodies nginx itself refuses (a malformed chunk size, past
# client_max_body_size, chunked or with Content-Length, over HTTP/1.1 and
# HTTP/2, in the first read or a later one, a temporary file it cannot
# create), the module's own rejections (with a body found malformed while
# it is discarded, and each row that checks the body), the module's own
# 500 (an OpenSSL with no digest), a limited key, a client that times out
# or goes away, and a passed request whose upstream fails.
#
# For each: an answer comes (read with a socket timeout; no timing is
# asserted), it is the module's JSON with its own status, the upstream
# received nothing for a request that was not validated, and the error
# log has no alert; a passed request still reaches its error_page
# fallback.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use DifyTest qw(uuid route envelope ids_body build_request);

DifyTest::require_module();

my $ANSWER = DifyTest::timeout(5);     # seconds an answer may take at most

my $ERRORS = '400 401 403 404 413 415 429 500 503';

# one server; $n is its number, $recursive its recursive_error_pages
sub server {
    my ($n, $recursive) = @_;
    my $again = $recursive eq 'on'
        ? "error_page $ERRORS = \@up;" : '';

    return qq{
    server {
        listen 127.0.0.1:%%PORT$n%%;
        listen 127.0.0.1:%%H2PORT$n%% http2;
        server_name localhost;

        dify_status on;
        dify_status_max_body_size 2k;
        client_max_body_size 4k;
        recursive_error_pages $recursive;
        add_header X-Dify-Status \$dify_status always;

        location /named/ {
            error_page $ERRORS = \@up;
            proxy_pass http://upstream;
        }
        location /n200/ {
            error_page $ERRORS =200 \@up;
            proxy_pass http://upstream;
        }
        location /uri/ {
            error_page $ERRORS /err/;
            proxy_pass http://upstream;
        }
        location /off/ {
            error_page $ERRORS = \@off;
            proxy_pass http://upstream;
        }
        location /err/ {
            $again
            proxy_pass http://upstream;
        }
        location \@up {
            $again
            proxy_pass http://upstream;
        }
        location \@off {
            dify_status off;
            $again
            proxy_pass http://upstream;
        }

        # the upstream fails after the module passed the request
        location /fb/ {
            error_page 502 = \@up;
            proxy_pass http://%%DEAD%%;
        }
        location /fb200/ {
            error_page 502 =200 \@up;
            proxy_pass http://%%DEAD%%;
        }
        location /fburi/ {
            error_page 502 = /err/;
            proxy_pass http://%%DEAD%%;
        }

        location /lim/ {
            dify_status_limit rate=1 r/h burst=1;
            error_page $ERRORS = \@up;
            proxy_pass http://upstream;
        }

        # the body's temporary file cannot be created (removed below)
        location /gone/ {
            client_body_temp_path %%DIR%%/gone$n;
            client_body_in_file_only on;
            error_page $ERRORS = \@up;
            proxy_pass http://upstream;
        }
        location /gone200/ {
            client_body_temp_path %%DIR%%/gone$n;
            client_body_in_file_only on;
            error_page $ERRORS =200 \@up;
            proxy_pass http://upstream;
        }

        location /pa/ {
            post_action \@up;
            proxy_pass http://upstream;
        }

        location /slow/ {
            client_body_timeout 1s;
            error_page $ERRORS = \@up;
            proxy_pass http://upstream;
        }
    }
};
}

my $t = DifyTest->new;
$t->start_redis;
$t->start_nginx(http => qq{
    dify_status_redis %%REDIS%% timeout=5s;
} . server(1, 'off') . server(2, 'on'));

# nginx's own [crit] for the temporary file it cannot create
$t->allow_log(qr{\[crit\] .* open\(\) ".*/gone\d/[\d.]+" failed});

for my $n (1, 2) {
    rmdir $t->dir . "/gone$n" or die "rmdir gone$n: $!";
}

my $KEY  = 'Bearer dataset-reentry';
my $DS   = uuid(1);
my $GOOD = ids_body(uuid(2), uuid(3));
my @JSON = ('Content-Type' => 'application/json');

my $MALFORMED = 'The request body is malformed.';
my $BADJSON   = 'Invalid JSON payload received or JSON payload is empty.';
my $MISSING   = "Authorization header must be provided and start with 'Bearer'";
my $TOO_LARGE = 'Request body must not be larger than 4096 bytes.';
my $OVER_CAP  = 'Request body must not be larger than 2048 bytes.';

my @SERVERS = ([ 1, 'recursive_error_pages off' ],
               [ 2, 'recursive_error_pages on' ]);
my @SHAPES  = ([ 'named', 'error_page = @named' ],
               [ 'n200',  'error_page =200 @named' ],
               [ 'uri',   'error_page to a URI' ],
               [ 'off',   'error_page = @named, dify_status off there' ]);


# the head of a PATCH to the route under /$prefix/
sub head {
    my ($prefix, %o) = @_;
    my @h = (Host => 'localhost');
    push @h, Authorization => $KEY unless $o{no_auth};
    push @h, @JSON, @{ $o{headers} // [] }, Connection => 'close';
    return 'PATCH ' . route($DS, 'enable', "/$prefix/v1") . " HTTP/1.1\r\n"
        . join('', map { "$h[2 * $_]: $h[2 * $_ + 1]\r\n" } 0 .. $#h / 2)
        . "\r\n";
}

# sends the pieces on one connection, a pause before each but the
# first, and reads the answer; undef when none came in time
sub exchange {
    my ($port, @pieces) = @_;
    return _exchange($port, 0, @pieces);
}

# the same, then waits for nginx to close the connection: the request is
# over, post_action included
sub exchange_closed {
    my ($port, @pieces) = @_;
    return _exchange($port, 1, @pieces);
}

sub _exchange {
    my ($port, $closed, @pieces) = @_;
    my $c = $t->connect(port => $t->port("PORT$port"));
    my $first = 1;
    for my $p (@pieces) {
        select undef, undef, undef, 0.2 unless $first;
        $first = 0;
        last unless $c->send($p);
    }
    my $res = eval { $c->read_response(timeout => $ANSWER) };
    $c->eof_within($ANSWER) if $res && $closed;
    $c->close;
    return $res;
}

# the module answered: its JSON, its status, nothing upstream
sub answered {
    my ($res, $status, $code, $message, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    if (!ok(defined $res, "$name: an answer within $ANSWER s")) {
        $t->nothing_upstream($name);
        return;
    }
    $t->reject_ok($res, $status, $code, $message, $name);
}

sub chunk { sprintf("%x\r\n", length $_[0]) . "$_[0]\r\n" }

my $BIG = '{"document_ids": [' . join(',', map { '"' . uuid($_) . '"' }
                                      1 .. 140) . ']}';   # about 5.3 KB
die 'BIG must be over client_max_body_size' if length $BIG <= 4096;
my $MID = '{"document_ids": [' . join(',', map { '"' . uuid($_) . '"' }
                                      1 .. 70) . ']}';    # about 2.6 KB
die 'MID must be between the caps'
    if length $MID <= 2048 || length $MID > 4096;


# --- bodies nginx refuses, over HTTP/1.1 -------------------------------------

for my $s (@SERVERS) {
    my ($n, $sname) = @$s;

    for my $sh (@SHAPES) {
        my ($p, $shape) = @$sh;
        my $te = [ 'Transfer-Encoding' => 'chunked' ];
        my $what = "$sname, $shape";

        answered(exchange($n, head($p, headers => $te)
                          . "zz\r\n{}\r\n0\r\n\r\n"),
            400, 'bad_request', $MALFORMED,
            "$what: a malformed chunk size in the first read");

        answered(exchange($n, head($p, headers => $te) . chunk('{"document'),
                          "zz\r\n{}\r\n0\r\n\r\n"),
            400, 'bad_request', $MALFORMED,
            "$what: a malformed chunk size in a later read");

        answered(exchange($n, head($p, headers => $te) . chunk($BIG)
                          . "0\r\n\r\n"),
            413, 'request_entity_too_large', $TOO_LARGE,
            "$what: a chunked body over client_max_body_size, in the first "
            . 'read');

        answered(exchange($n, head($p, headers => $te) . chunk('{"doc'),
                          chunk($BIG) . "0\r\n\r\n"),
            413, 'request_entity_too_large', $TOO_LARGE,
            "$what: a chunked body over client_max_body_size, in a later "
            . 'read');
    }
}


# --- a Content-Length over client_max_body_size ------------------------------
#
# nginx refuses it before the module's phase and discards the body: the
# error_page's location is where the module first sees the request, then
# without its body, so that it cannot pass (400, or 413 when what is left
# of the length is still over dify_status_max_body_size).  Through a URI
# it is a GET of the error page, not checked, and not the PATCH.  (A
# location with dify_status off is not checked either: there nginx sends
# the PATCH on without its body, as it would without the module.)

for my $s (@SERVERS) {
    my ($n, $sname) = @$s;

    for my $sh (@SHAPES[0 .. 2]) {
        my ($p, $shape) = @$sh;
        my $what = "$sname, $shape: Content-Length over client_max_body_size";
        my $res = exchange($n, head($p, headers => [
                               'Content-Length' => length $BIG ]) . $BIG);

        if ($p eq 'uri') {
            ok defined $res, "$what: an answer within $ANSWER s";
            my @up = $t->upstream_requests;
            ok !grep({ $_->{method} ne 'GET' || $_->{uri} ne '/err/' } @up),
                "$what: the upstream got the error page's GET only";
            $t->upstream_clear;
            next;
        }

        my $st = $res && $res->{status} == 413 ? 413 : 400;
        answered($res, $st, $st == 413 ? 'request_entity_too_large'
                                       : 'bad_request',
                 $st == 413 ? $OVER_CAP : $BADJSON, $what);
    }
}


# --- the module's own rejections ---------------------------------------------

for my $s (@SERVERS) {
    my ($n, $sname) = @$s;

    for my $sh (@SHAPES) {
        my ($p, $shape) = @$sh;
        my $te = [ 'Transfer-Encoding' => 'chunked' ];
        my $what = "$sname, $shape";

        # the body is discarded, and found malformed, before the answer
        answered(exchange($n, head($p, no_auth => 1, headers => $te)
                          . "zz\r\n{}\r\n0\r\n\r\n"),
            401, 'unauthorized', $MISSING,
            "$what: 401 with a malformed chunked body");

        answered(exchange($n, head($p, headers => $te) . chunk($MID)
                          . "0\r\n\r\n"),
            413, 'request_entity_too_large', $OVER_CAP,
            "$what: row 5, a chunked body over dify_status_max_body_size");

        answered(exchange($n, head($p, headers => [
                          'Content-Length' => length $MID ]) . $MID),
            413, 'request_entity_too_large', $OVER_CAP,
            "$what: row 5, a Content-Length over dify_status_max_body_size");

        answered(exchange($n, head($p, headers => [ 'Content-Length' => 5 ])
                          . '{"a":'),
            400, 'bad_request', $BADJSON, "$what: row 6, malformed JSON");

        my $b = '{"document_ids": ["x"]}';
        answered(exchange($n, head($p, headers => [ 'Content-Length' =>
                          length $b ]) . $b),
            400, 'invalid_param', 'document_ids[0] is not a valid UUID.',
            "$what: row 7, an invalid id");
    }
}


# --- the body's temporary file cannot be created: nginx's 500 ----------------

for my $s (@SERVERS) {
    my ($n, $sname) = @$s;

    for my $p ('gone', 'gone200') {
        my $what = "$sname, /$p/";
        my $h = head($p, headers => [ 'Content-Length' => length $GOOD ]);

        answered(exchange($n, $h . $GOOD), 500, 'internal_server_error',
            'Internal Server Error', "$what: the whole body in the first read");

        answered(exchange($n, $h . substr($GOOD, 0, 10), substr($GOOD, 10)),
            500, 'internal_server_error', 'Internal Server Error',
            "$what: the body in two reads");
    }
}


# --- a limited key -----------------------------------------------------------

for my $s (@SERVERS) {
    my ($n, $sname) = @$s;
    my $key = "Bearer dataset-reentry-limited-$n";
    my $h = 'PATCH ' . route($DS, 'enable', '/lim/v1') . " HTTP/1.1\r\n"
        . "Host: localhost\r\nAuthorization: $key\r\n"
        . "Content-Type: application/json\r\nContent-Length: "
        . length($GOOD) . "\r\nConnection: close\r\n\r\n";

    my $res = exchange($n, $h . $GOOD);
    $t->pass_ok($res // {}, body => $GOOD,
        name => "$sname: the key's first request");

    $res = exchange($n, $h . $GOOD);
    answered($res, 429, 'too_many_requests', qr/^Rate limit exceeded/,
        "$sname: error_page 429 = \@named: the limited request");
    is $res && $res->{headers}{'x-dify-status'}, 'limited',
        "$sname: \$dify_status limited";
}


# --- passed, then the upstream fails: the fallback is reached ----------------

for my $s (@SERVERS) {
    my ($n, $sname) = @$s;

    for my $p ('fb', 'fb200') {
        my $res = exchange($n, head($p, headers => [
                               'Content-Length' => length $GOOD ]) . $GOOD);
        $t->pass_ok($res // {}, method => 'PATCH',
            uri => route($DS, 'enable', "/$p/v1"), body => $GOOD,
            name => "$sname, /$p/: error_page 502 to a named location");
    }

    # through a URI nginx makes it a GET of the error page; the body goes
    # with it, as it would without the module
    my $res = exchange($n, head('fburi', headers => [
                           'Content-Length' => length $GOOD ]) . $GOOD);
    $t->pass_ok($res // {}, method => 'GET', uri => '/err/', body => $GOOD,
        name => "$sname, /fburi/: error_page 502 to a URI");
}


# --- HTTP/2: what nginx refuses while the body comes -------------------------

for my $s (@SERVERS) {
    my ($n, $sname) = @$s;

    for my $sh (@SHAPES) {
        my ($p, $shape) = @$sh;
        my $what = "$sname, $shape, HTTP/2";
        my $path = route($DS, 'enable', "/$p/v1");
        my @h = (authorization => $KEY, 'content-type' => 'application/json');

        my $h2 = $t->h2_connect(port => $t->port("H2PORT$n"),
                                timeout => $ANSWER);
        my $res = $h2->request('PATCH', $path, headers => \@h, body => $BIG,
                               no_length => 1, frame => 1000, pause => 0.05);
        $h2->close;
        $res = undef if $res && !defined $res->{status};
        answered($res, 413, 'request_entity_too_large', $TOO_LARGE,
            "$what: a body without a length, over client_max_body_size");

        $h2 = $t->h2_connect(port => $t->port("H2PORT$n"), timeout => $ANSWER);
        $res = $h2->request('PATCH', $path,
                            headers => [ @h, 'content-length' => 10 ],
                            body => $GOOD, frame => 5, pause => 0.05);
        $h2->close;
        $res = undef if $res && !defined $res->{status};
        answered($res, 400, 'bad_request', $MALFORMED,
            "$what: more data than declared");
    }
}


# --- a client that times out or goes away while the body comes ---------------
#
# nginx ends the request on the spot: nothing is answered, nothing goes on,
# nothing is left behind.

for my $s (@SERVERS) {
    my ($n, $sname) = @$s;
    my $h = head('slow', headers => [ 'Content-Length' => length $GOOD ]);

    my $c = $t->connect(port => $t->port("PORT$n"));
    $c->send($h . substr($GOOD, 0, 5));
    ok $c->eof_within(DifyTest::timeout(10)),
        "$sname: client_body_timeout: nginx closes the connection";
    $c->close;
    $t->nothing_upstream("$sname: client_body_timeout");

    $c = $t->connect(port => $t->port("PORT$n"));
    $c->send($h . substr($GOOD, 0, 5));
    select undef, undef, undef, 0.2;
    $c->close;
    select undef, undef, undef, 0.2;
    $t->nothing_upstream("$sname: a client gone in the middle of the body");

    my $path = route($DS, 'enable', '/slow/v1');
    my @h = (authorization => $KEY, 'content-type' => 'application/json');
    my $h2 = $t->h2_connect(port => $t->port("H2PORT$n"));
    my $res = $h2->request('PATCH', $path, headers => \@h, body => $GOOD,
                           frame => 5, pause => DifyTest::timeout(2));
    $h2->close;
    ok !($res && $res->{status} && $res->{status} =~ /^2/),
        "$sname: HTTP/2, client_body_timeout: no success";
    $t->nothing_upstream("$sname: HTTP/2, client_body_timeout");

    $h2 = $t->h2_connect(port => $t->port("H2PORT$n"));
    $h2->request('PATCH', $path, headers => \@h, body => $GOOD,
                 abort_after => 10);
    select undef, undef, undef, 0.2;
    $t->nothing_upstream("$sname: HTTP/2, a client gone in the middle of the "
        . 'body');
}


# --- post_action: it runs after the answer, through the phases again ---------

for my $s (@SERVERS) {
    my ($n, $sname) = @$s;

    answered(exchange_closed($n, head('pa', no_auth => 1, headers => [
                          'Content-Length' => length $GOOD ]) . $GOOD),
        401, 'unauthorized', $MISSING,
        "$sname: post_action to a named location after a rejection");

    # a passed request is declined there too: post_action's own request
    # follows the one the module let through
    my $res = exchange_closed($n, head('pa', headers => [
                                  'Content-Length' => length $GOOD ]) . $GOOD);
    is $res && $res->{status}, 200, "$sname: post_action after a pass: 200";
    my @up = $t->upstream_requests;
    is scalar(grep { $_->{body} eq $GOOD } @up), 2,
        "$sname: post_action after a pass: the request, then post_action's";
    $t->upstream_clear;
}

$t->done;


# --- the module's own 500 ----------------------------------------------------
#
# An OpenSSL whose configuration provides no digest (no provider loaded)
# cannot hash the key: the module answers its own 500, which
# error_page 500 = @named must not turn into a request forwarded unchecked.

SKIP: {
    my $conf = DifyTest->new;
    my $cnf = $conf->dir . '/openssl.cnf';
    open my $fh, '>', $cnf or die "$cnf: $!";
    print $fh "openssl_conf = init\n\n[init]\nproviders = providers\n\n"
        . "[providers]\nnull = null\n\n[null]\nactivate = 1\n";
    close $fh;

    local $ENV{OPENSSL_CONF} = $cnf;
    $conf->start_nginx(server => q{
        dify_status on;
        recursive_error_pages on;
        error_page 400 401 413 500 502 503 = @up;

        location /named/ {
            proxy_pass http://upstream;
        }
        location /n200/ {
            error_page 500 =200 @up;
            proxy_pass http://upstream;
        }
        location /uri/ {
            error_page 500 /err/;
            proxy_pass http://upstream;
        }
        location /err/ {
            proxy_pass http://upstream;
        }
        location @up {
            proxy_pass http://upstream;
        }
    });
    $conf->allow_log(qr/dify_status: hashing the key failed/);

    for my $p ('named', 'n200', 'uri') {
        my $r = eval {
            $conf->http('PATCH', route($DS, 'enable', "/$p/v1"),
                headers => [ Authorization => $KEY, @JSON ], body => $GOOD);
        };
        ok defined $r, "no digest, /$p/: an answer";
        $conf->reject_ok($r // {}, 500, 'internal_server_error',
            'Internal Server Error', "no digest, /$p/: the module's 500, "
            . 'nothing forwarded');
    }

    ok scalar(() = $conf->error_log =~ /hashing the key failed/g) >= 3,
        'no digest: the failure is logged';
    $conf->done;
}

done_testing;
