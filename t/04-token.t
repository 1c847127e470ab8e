#!/usr/bin/perl
#
# The API key is the token Dify derives, whatever its spelling.  Dify runs
# behind gunicorn 25.3, whose parse_headers strips SP and HTAB from both
# ends of every header value (nginx keeps a trailing HTAB over HTTP/1.1,
# and leading and trailing SP and HTAB over HTTP/2); then Dify's wraps.py
# does
#
#     if auth_header is None or " " not in auth_header: 401 (MISSING)
#     auth_scheme, auth_token = auth_header.split(None, 1)
#     if auth_scheme.lower() != "bearer": 401 (SCHEME)
#
# on the latin-1 string (split() cuts on Python's whitespace: \t \n \v \f
# \r \x1c-\x1f SP \x85 \xa0; a blank or one-word value makes the unpacking
# raise, a 500 in Dify, answered here with the first 401).
#
# For every spelling of the table, over HTTP/1.1 (exact bytes on a raw
# socket) and over HTTP/2:
#   - when the model refuses it: the module's 401 with the model's message,
#     nothing upstream, nothing in Redis;
#   - otherwise: passed, charged to SHA-256 of the model's token (the only
#     key in Redis, and $dify_status_key), and the Authorization header the
#     upstream received gives that same token to the model.
# All the spellings of one key share one bucket: burst=5 admits exactly 5
# of them over both protocols together.  A repeated Authorization header
# is refused by nginx itself.  dify_status_token_prefix answers Dify's 401
# for unknown keys ("Access token is invalid") at no Redis call.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use DifyTest qw(uuid route envelope ids_body);
use DifyLimit qw(fresh_key key_hash tat_key wait_for);

DifyTest::require_module();

my $MISSING = "Authorization header must be provided and start with 'Bearer'";
my $SCHEME  = "Authorization scheme must be 'Bearer'";
my $INVALID = 'Access token is invalid';

my $t = DifyTest->new;
$t->start_redis;

my $REDIS_TIMEOUT = 1000 * (DifyTest->valgrind ? DifyTest::slow() : 1);

$t->start_nginx(http => qq{
    dify_status_redis %%REDIS%% timeout=${REDIS_TIMEOUT}ms;
    log_format tok '\$http_x_row \$dify_status \$dify_status_key';

    server {
        listen 127.0.0.1:%%PORT%%;
        listen 127.0.0.1:%%H2PORT%% http2;
        server_name localhost;

        dify_status_token_prefix dataset-;

        location /v1 {
            dify_status on;
            dify_status_token_prefix off;
            dify_status_limit rate=100r/h burst=100000;
            access_log %%DIR%%/tok.log tok;
            proxy_pass http://upstream;
        }
        location /burst/v1 {
            dify_status on;
            dify_status_token_prefix off;
            dify_status_limit rate=5r/h;
            proxy_pass http://upstream;
        }
        location /prefix/v1 {
            dify_status on;
            dify_status_limit rate=100r/h burst=100000;
            proxy_pass http://upstream;
        }
        location = /metrics {
            dify_status_metrics;
        }
    }
});

wait_for(DifyTest::timeout(10), sub {
    $t->http('PATCH', route(uuid(1), 'enable'),
        headers => [ Authorization => 'Bearer ' . fresh_key('warm'),
                     'Content-Type' => 'application/json' ],
        body => ids_body(uuid(2)))->{status} == 200 });
$t->upstream_clear;


# --- the model: gunicorn 25.3 + Dify's wraps.py ------------------------

my $PYWS = "\x09-\x0d\x1c-\x20\x85\xa0";    # str.isspace() over latin-1

# parse_headers: value.strip(" \t")
sub gunicorn_value {
    my ($v) = @_;
    $v =~ s/\A[ \t]+//;
    $v =~ s/[ \t]+\z//;
    return $v;
}

# validate_and_get_api_token, on what gunicorn passes on
sub wraps_py {
    my ($v) = @_;
    return [ 'missing' ] if !defined $v || index($v, ' ') < 0;
    my ($scheme, $token) = $v =~ /\A[$PYWS]*([^$PYWS]+)[$PYWS]+([^$PYWS].*)\z/s
        or return [ 'missing' ];            # split() gave fewer than 2
    (my $lc = $scheme) =~ tr/A-Z/a-z/;
    return [ 'scheme' ] if $lc ne 'bearer';
    return [ 'ok', $token ];
}

sub model { return wraps_py(gunicorn_value($_[0])) }

# the Authorization value gunicorn parses from the head nginx sent on
sub forwarded_value {
    my ($head) = @_;
    my @v = map { /\A[Aa]uthorization:(.*)\z/s ? gunicorn_value($1) : () }
            split /\r\n/, $head;
    return @v == 1 ? $v[0] : undef;
}

sub show {
    my ($v) = @_;
    $v =~ s/([^\x21-\x7e ])/sprintf '\\x%02x', ord $1/ge;
    return "\"$v\"";
}

# K is replaced by the row's key
my @SPELLINGS = (
    # plain, case, runs of whitespace between
    'Bearer K', 'bearer K', 'BEARER K', 'bEaReR K', 'Bearer  K',
    "Bearer \tK", "Bearer\t K", "Bearer \t \tK",
    # trailing: gunicorn strips SP and HTAB, nginx does not (all of them)
    "Bearer K\t", "Bearer K\t\t", "Bearer K \t", "Bearer K\t ", 'Bearer K ',
    'Bearer K  ', "Bearer K \t \t",
    # leading
    ' Bearer K', "\tBearer K", " \t Bearer K \t ", "\t\tbearer\t \tK\t\t",
    # the other whitespace Python splits on, inside and around
    "Bearer \x0bK", "Bearer\x0b K", "Bearer\x0c K", "Bearer \x1c\x1d\x1e\x1fK",
    "Bearer \x85K", "Bearer \xa0K", "Bearer\xa0 K", "Bearer\x0b\x0c\x1c K",
    "\x0bBearer K", "\xa0Bearer K", "\x85 Bearer K", "\x1f\tBearer K",
    # ... which gunicorn does not strip: it stays in the token
    "Bearer K\x0b", "Bearer K\x0b ", "Bearer K\x0b\t", "Bearer K \x0b",
    "Bearer K\xa0\t", "Bearer K \x85 \t", "Bearer K\x1c", "Bearer K\x0c \t",
    # more words: the token is the rest
    'Bearer K x', "Bearer K\tx", "Bearer K \tx \t", "Bearer K\x0bx",
    # bytes that are not whitespace to Python
    "Bearer \x01K", "Bearer K\x01", "Bearer K\x7f", "Bearer \xe9K",
    # refused: no SP once stripped, one word, blank
    '', ' ', "\t", " \t ", 'Bearer', 'Bearer ', 'Bearer  ', "Bearer \t",
    "Bearer\t", "Bearer\t ", " Bearer\t", "Bearer\tK", "Bearer\tK ",
    "Bearer\tK\t ", "bearer\tK ", " Bearer\tK", "\tBearer\tK\t",
    "Bearer\xa0K", "Bearer\xa0K ", "Bearer\x0bK\t", "Bearer\x85K \t",
    'K', 'K ', ' K', "Bearer \x0b", "Bearer \xa0", "Bearer \x85\t",
    "Bearer \x0b\x0c ", "\x0bBearer\x0b", "\x0b \x0b", "\xa0 ", " \x85 ",
    # refused: another scheme
    'Basic K', 'Token K', 'Bearerx K', 'Bearer: K', "Bearer\x01 K",
    'xBearer K', 'Bear K', "Token\tK K", 'K Bearer', "\x0bToken K",
    "B\xe9arer K", "Bearer\x1b K", "\tBasic\t K\t", 'Bearer-K x',
);

my $DS = uuid(1);
my $BODY = ids_body(uuid(2));
my (%row_token, %row_refused, @refused_by_model);
my $row = 0;

sub send_row {
    my ($proto, $path, $value, $rowid) = @_;
    if ($proto eq 'h2') {
        return $t->h2('PATCH', $path, body => $BODY,
            headers => [ authorization => $value,
                         'content-type' => 'application/json',
                         'x-row' => $rowid ]);
    }
    return $t->http('PATCH', $path, body => $BODY,
        headers => [ Authorization => $value,
                     'Content-Type' => 'application/json',
                     'X-Row' => $rowid ]);
}

# --- every spelling, over HTTP/1.1 and HTTP/2 ----------------------------

for my $proto ('h1', 'h2') {
    for my $sp (@SPELLINGS) {
        $row++;
        my $key = fresh_key('tok');
        (my $value = $sp) =~ s/K/$key/g;
        my $m = model($value);
        my $name = "$proto " . show($sp);
        my $path = route($DS, 'enable');

        $t->redis('FLUSHDB');
        $t->upstream_clear;

        my $r = send_row($proto, $path, $value, "r$row");

        if ($m->[0] ne 'ok') {
            my $msg = $m->[0] eq 'missing' ? $MISSING : $SCHEME;
            $t->reject_ok($r, 401, 'unauthorized', $msg,
                "$name: refused as Dify does ($m->[0])");
            is_deeply $t->redis('KEYS', 'dify:status:*'), [],
                "$name: nothing charged";
            $row_refused{"r$row"} = 1;
            next;
        }

        my $token = $m->[1];
        my @up = $t->upstream_requests;

        subtest "$name: charged to the token Dify derives" => sub {
            is $r->{status}, 200, 'passed' or diag $r->{body};
            is_deeply $t->redis('KEYS', 'dify:status:*'), [ tat_key($token) ],
                'the only key in Redis is SHA-256 of the model\'s token';
            is scalar @up, 1, 'one request upstream';
            my $fwd = @up ? forwarded_value($up[0]{head}) : undef;
            ok defined $fwd, 'the upstream got one Authorization header';
            is_deeply model($fwd // ''), [ 'ok', $token ],
                'gunicorn + wraps.py derive the same token from it';
        };
        $row_token{"r$row"} = $token;
    }
}

# $dify_status_key: the token's hash for passed rows, unset for the others

{
    my %log;
    wait_for(DifyTest::timeout(10), sub {
        %log = ();
        my $s = do { local (@ARGV, $/) = $t->dir . '/tok.log'; <> } // '';
        for (split /\n/, $s) {
            my ($id, $status, $key) = split / /;
            $log{$id} = [ $status, $key ];
        }
        return keys %log >= $row });

    my @bad;
    for my $id (sort keys %row_token) {
        my $want = substr key_hash($row_token{$id}), 0, 12;
        push @bad, $id unless $log{$id} && $log{$id}[0] eq 'passed'
                              && $log{$id}[1] eq $want;
    }
    for my $id (sort keys %row_refused) {
        push @bad, $id unless $log{$id} && $log{$id}[0] eq 'rejected'
                              && $log{$id}[1] eq '-';
    }
    is_deeply \@bad, [], '$dify_status and $dify_status_key of every row';
}


# --- all the spellings of one key share one bucket ---------------------

{
    my $key = fresh_key('burst');
    my @same = grep { my $m = model($_); $m->[0] eq 'ok' && $m->[1] eq $key }
               map { (my $v = $_) =~ s/K/$key/g; $v } @SPELLINGS;
    cmp_ok scalar @same, '>=', 20, scalar(@same) . ' spellings of one key';

    $t->redis('FLUSHDB');
    $t->upstream_clear;

    my (%status, @passed);
    for my $i (0 .. $#same) {
        for my $proto ('h1', 'h2') {
            my $r = send_row($proto, route($DS, 'enable', '/burst/v1'),
                             $same[$i], "b$i$proto");
            $status{ $r->{status} }++;
            push @passed, "$proto " . show($same[$i]) if $r->{status} == 200;
        }
    }
    is $status{200}, 5, 'burst=5: exactly 5 admitted over all spellings'
        or diag explain \@passed;
    is $status{429}, 2 * @same - 5, 'the others limited';
    is scalar(() = $t->upstream_requests), 5, '5 reached the upstream';
    is_deeply $t->redis('KEYS', 'dify:status:*'), [ tat_key($key) ],
        'one bucket in Redis';
}


# --- a repeated Authorization header: nginx's own 400 ------------------

{
    my $k1 = fresh_key('dup');
    my $k2 = fresh_key('dup');
    $t->upstream_clear;
    for my $pair ([ "Bearer $k1", "Bearer $k2" ], [ "Bearer $k1", "Bearer $k1" ],
                  [ "Bearer $k1", 'Basic x' ], [ '', "Bearer $k1" ])
    {
        my $r = $t->http('PATCH', route($DS, 'enable'), body => $BODY,
            headers => [ Authorization => $pair->[0],
                         'Content-Type' => 'application/json',
                         Authorization => $pair->[1] ]);
        is $r->{status}, 400, 'h1: two Authorization headers -> 400 '
                              . show("$pair->[0] | $pair->[1]");
        $r = $t->h2('PATCH', route($DS, 'enable'), body => $BODY,
            headers => [ authorization => $pair->[0],
                         'content-type' => 'application/json',
                         authorization => $pair->[1] ]);
        is $r->{status}, 400, 'h2: two Authorization headers -> 400 '
                              . show("$pair->[0] | $pair->[1]");
    }
    $t->nothing_upstream('no repeated Authorization reached the upstream');
}


# --- dify_status_token_prefix ---------------------------------------------

sub redis_commands {
    my $m = $t->http('GET', '/metrics')->{body};
    return $m =~ /^dify_status_redis_commands_total (\d+)$/m ? $1 : -1;
}

{
    my $key = fresh_key('pfx');
    my $path = route($DS, 'enable', '/prefix/v1');
    my $before = redis_commands();
    $t->redis('FLUSHDB');
    $t->upstream_clear;

    for my $proto ('h1', 'h2') {
        for my $v ("Bearer app-$key", "Bearer Dataset-$key", 'Bearer dataset',
                   'Bearer datase', "Bearer x $key", "Bearer \x01$key",
                   "Bearer \xa0\x0b app-x\t")
        {
            $t->reject_ok(send_row($proto, $path, $v, 'p'), 401,
                'unauthorized', $INVALID,
                "$proto prefix: " . show($v) . ' -> Dify\'s unknown key');
        }
        $t->reject_ok(send_row($proto, route($DS, 'bogus', '/prefix/v1'),
                               "Bearer app-$key", 'p'),
            401, 'unauthorized', $INVALID,
            "$proto prefix: checked with the token, before the action");
        $t->reject_ok(send_row($proto, route('nope', 'enable', '/prefix/v1'),
                               "Bearer app-$key", 'p'),
            404, 'not_found', 'Dataset not found.',
            "$proto prefix: after the dataset id");
        $t->reject_ok(send_row($proto, $path, "Basic $key", 'p'),
            401, 'unauthorized', $SCHEME,
            "$proto prefix: the scheme is judged first");
        $t->reject_ok(send_row($proto, $path, "Bearer\t$key", 'p'),
            401, 'unauthorized', $MISSING,
            "$proto prefix: a missing token is judged first");
    }

    is redis_commands(), $before, 'prefix: no Redis command for them';
    is_deeply $t->redis('KEYS', 'dify:status:*'), [],
        'prefix: nothing charged';

    for my $proto ('h1', 'h2') {
        for my $v ("Bearer $key", "Bearer $key\t", "bearer \x0b$key \t",
                   "Bearer dataset-")
        {
            my $r = send_row($proto, $path, $v, 'p');
            $t->pass_ok($r, method => 'PATCH', uri => $path, body => $BODY,
                name => "$proto prefix: " . show($v) . ' passes');
        }
    }
    is_deeply [ sort @{ $t->redis('KEYS', 'dify:status:*') } ],
        [ sort(tat_key($key), tat_key('dataset-')) ],
        'prefix: keys that pass are charged';

    # off in /v1 although the server sets it
    my $r = send_row('h1', route($DS, 'enable'), "Bearer app-$key", 'p');
    $t->pass_ok($r, method => 'PATCH', uri => route($DS, 'enable'),
        body => $BODY, name => 'dify_status_token_prefix off: app- passes');
}

$t->done;
done_testing;
