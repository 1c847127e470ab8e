#!/usr/bin/perl
#
# Every new Redis connection loads the limiter's script in its handshake
# (SCRIPT LOAD after AUTH and SELECT), so that the full script crosses
# the wire once per connection, not once per request in flight:
#
#   - Redis restarted (its script cache empty) while requests keep
#     coming: INFO commandstats shows one SCRIPT LOAD per nginx
#     connection, no EVAL at all, and every request Redis answered was an
#     EVALSHA that ran;
#   - SCRIPT FLUSH with requests in flight (CLIENT PAUSE holds them), on
#     connections already up: at most one EVAL per connection (the first
#     NOSCRIPT sends the script, the other requests in flight try EVALSHA
#     again behind it), and exact counts;
#   - an ACL user that may not run SCRIPT LOAD still works: the first
#     NOSCRIPT of each connection sends the script with EVAL, once.
#
# On the code before the handshake loaded the script, each request in
# flight after a restart or a flush sent the script itself (EVAL), so
# EVAL calls counted the requests, not the connections.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use DifyTest;
use DifyLimit qw(fresh_key limit_key patch concurrent wait_for
                 upstream_for);

DifyTest::require_module();

my $VG = DifyTest->valgrind;
my $SLOW = $VG ? DifyTest::slow() : 1;
sub ms { return $_[0] * $SLOW }
my $WORKERS = $VG ? 1 : 2;
my $N = $VG ? 12 : 30;

sub http_conf {
    my ($redis) = @_;
    return qq{
    dify_status_redis $redis timeout=} . ms(500) . q{ms connect_timeout=}
        . ms(500) . q{ms;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Dify-Status $dify_status always;
        location /v1/ {
            dify_status on;
            dify_status_limit rate=10 r/h;
            dify_status_redis_fallback deny;
            proxy_pass http://upstream;
        }
    }
};
}

sub stats {
    my ($t) = @_;
    my $s = $t->redis('INFO', 'commandstats') // '';
    my %n;
    $n{$1} = $2 while $s =~ /^cmdstat_([a-z|]+):calls=(\d+)/mg;
    return \%n;
}

# nginx's connections to Redis: every client but the test's own
sub nginx_clients {
    my ($t) = @_;
    my $l = $t->redis('CLIENT', 'LIST') // '';
    return scalar grep { !/cmd=client\|list/ } split /\n/, $l;
}

sub all_up {
    my ($t, $n) = @_;
    return wait_for(DifyTest::timeout(5), sub {
        return 0 unless nginx_clients($t) >= $n;
        my $r = patch($t, fresh_key('up'));
        return $r->{status} == 200
            && ($r->{headers}{'x-dify-status'} // '') eq 'passed';
    });
}

sub outcomes {
    my %n;
    $n{ $_->{headers}{'x-dify-status'} // "status $_->{status}" }++ for @_;
    return join ', ', map { "$_ $n{$_}" } sort keys %n;
}

subtest 'Redis restarted under load: SCRIPT LOAD once per connection' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => $WORKERS, http => http_conf('%%REDIS%%'));
    ok all_up($t, $WORKERS), 'the workers are connected';

    $t->restart_redis;

    # requests keep coming while the workers find Redis again
    my (@r, $key);
    my $t0 = time;
    while (time - $t0 < DifyTest::timeout(2)) {
        $key = fresh_key('restart');
        push @r, concurrent($t, $N, $key);
    }
    ok !(grep { $_->{status} == 0 } @r), 'every request was answered';
    note 'outcomes: ' . outcomes(@r);
    ok all_up($t, $WORKERS), 'the workers are connected again';

    # and a round with every connection up
    $key = fresh_key('after');
    $t->redis('HSET', limit_key($key), 'burst', '10');
    my @a = concurrent($t, $N, $key);
    is scalar(grep { $_->{status} == 200 } @a), 10, 'exactly 10 pass';
    is scalar(grep { $_->{status} == 429 } @a), $N - 10, 'the rest 429';

    my $s = stats($t);
    my $conns = nginx_clients($t);
    is $s->{'script|load'} // 0, $conns,
        "one SCRIPT LOAD per nginx connection ($conns)";
    is $s->{eval} // 0, 0, 'no EVAL: the full script was never resent';
    cmp_ok $s->{evalsha} // 0, '>=', $N,
        'the requests ran EVALSHA (' . ($s->{evalsha} // 0) . ')';
    $t->done;
};

subtest 'SCRIPT FLUSH under load: the script sent once per connection' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => $WORKERS, http => http_conf('%%REDIS%%'));
    ok all_up($t, $WORKERS), 'the workers are connected';

    my $before = stats($t);
    my $key = fresh_key('flush');
    $t->redis('HSET', limit_key($key), 'burst', '10');
    $t->redis('SCRIPT', 'FLUSH');
    $t->upstream_clear;

    # all in flight at once: Redis holds them, then answers NOSCRIPT to each
    is $t->redis('CLIENT', 'PAUSE', ms(200), 'ALL'), 'OK', 'CLIENT PAUSE';
    my @r = concurrent($t, $N, $key);
    is scalar(grep { $_->{status} == 200 } @r), 10, 'exactly 10 pass';
    is scalar(grep { $_->{status} == 429 } @r), $N - 10,
        'the rest 429, none 503';
    is scalar(upstream_for($t, $key)), 10, 'upstream got exactly 10';
    is outcomes(@r), "limited " . ($N - 10) . ", passed 10",
        'all decided by Redis';

    my $s = stats($t);
    my $evals = ($s->{eval} // 0) - ($before->{eval} // 0);
    cmp_ok $evals, '>=', 1, "EVAL sent the script again ($evals)";
    cmp_ok $evals, '<=', $WORKERS, 'at most once per connection';
    $t->done;
};

subtest 'an ACL user without SCRIPT: EVAL once per connection' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    is $t->redis('ACL', 'SETUSER', 'gw', 'on', '>gw-pw', '~dify:status:*',
                 '+evalsha', '+eval', '+ping', '+select',
                 '+hmget', '+time', '+mget', '+exists', '+set'),
        'OK', 'ACL SETUSER gw, without +script';
    $t->start_nginx(workers => $WORKERS,
                    http => http_conf('%%REDIS%% user=gw password=gw-pw'));
    ok all_up($t, $WORKERS), 'the workers are connected';

    my $key = fresh_key('acl');
    my @r = concurrent($t, $N, $key);
    is scalar(grep { $_->{status} == 200 } @r), 10, 'exactly 10 pass';
    is outcomes(@r), "limited " . ($N - 10) . ", passed 10",
        'all decided by Redis';

    my $s = stats($t);
    cmp_ok $s->{eval} // 0, '<=', $WORKERS,
        'EVAL at most once per connection (' . ($s->{eval} // 0) . ')';
    unlike $t->error_log, qr/\[error\].*SCRIPT/,
        'the refused SCRIPT LOAD is no error';
    $t->done;
};

done_testing;
