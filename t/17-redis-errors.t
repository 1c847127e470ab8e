#!/usr/bin/perl
#
# Error replies are logged once per change of their class, never once
# per request, and counted by class in the metrics
# (dify_status_redis_error_replies_total{class="..."}):
#
#   - Redis out of memory (maxmemory 1, noeviction): every request gets
#     OOM from the script and takes the fallback; the error log has one
#     line per worker at most, the "oom" counter counts every request;
#   - then Redis a read-only replica (REPLICAOF a dead master): READONLY,
#     a new class, logged once more per worker at most, counted apart;
#   - REPLICAOF NO ONE: requests are decided by Redis again.
#
# On the code before this, every request logged "unexpected reply from
# redis", and there was no counter by class.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use DifyTest;
use DifyLimit qw(fresh_key patch wait_for);

DifyTest::require_module();

my $VG = DifyTest->valgrind;
my $SLOW = $VG ? DifyTest::slow() : 1;
my $WORKERS = $VG ? 1 : 2;
my $N = 20;

my $t = DifyTest->new;
$t->start_redis;
$t->start_nginx(workers => $WORKERS, http => q{
    dify_status_redis %%REDIS%% timeout=} . 500 * $SLOW . q{ms;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Dify-Status $dify_status always;
        location /v1/ {
            dify_status on;
            dify_status_limit rate=10 r/h;
            dify_status_redis_fallback deny;
            proxy_pass http://upstream;
        }
        location = /metrics {
            dify_status_metrics;
        }
    }
});

sub errors_by_class {
    my $r = $t->request('GET', '/metrics');
    my %n;
    $n{$1} = $2 while $r->{body} =~
        /^dify_status_redis_error_replies_total\{class="([a-z]+)"\} (\d+)$/mg;
    return \%n;
}

sub round {
    my ($tag) = @_;
    return map { patch($t, fresh_key($tag)) } 1 .. $N;
}

sub lines {
    my ($mark, $re) = @_;
    return scalar grep { /$re/ } split /\n/, $t->error_log_since($mark);
}

ok wait_for(DifyTest::timeout(5), sub {
    my $r = patch($t, fresh_key('up'));
    return ($r->{headers}{'x-dify-status'} // '') eq 'passed';
}), 'decided by Redis';

my $e0 = errors_by_class();
is scalar(keys %$e0), 11, 'every class is exposed, zero or not';
is $e0->{oom}, 0, 'no OOM yet';

# out of memory
$t->redis('CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
$t->redis('CONFIG', 'SET', 'maxmemory', '1');
my $mark = $t->log_mark;
my @r = round('oom');
is scalar(grep { $_->{status} == 503 } @r), $N, "OOM: $N fallbacks (deny)";
my $oom = lines($mark, qr/answered "OOM/);
cmp_ok $oom, '>=', 1, 'OOM logged';
cmp_ok $oom, '<=', $WORKERS, "once per worker at most ($oom)";
is lines($mark, qr/unexpected reply/), 0, 'no line per request';
my $e1 = errors_by_class();
is $e1->{oom} - $e0->{oom}, $N, "oom: +$N";

# a read-only replica
$t->redis('CONFIG', 'SET', 'maxmemory', '0');
is $t->redis('REPLICAOF', '127.0.0.1', $t->port('DEAD_PORT')), 'OK',
    'REPLICAOF a dead master';
$mark = $t->log_mark;
@r = round('ro');
is scalar(grep { $_->{status} == 503 } @r), $N, "READONLY: $N fallbacks";
my $ro = lines($mark, qr/answered "READONLY/);
cmp_ok $ro, '>=', 1, 'READONLY logged: a new class';
cmp_ok $ro, '<=', $WORKERS, "once per worker at most ($ro)";
is lines($mark, qr/answered "OOM/), 0, 'OOM not again';
my $e2 = errors_by_class();
is $e2->{readonly} - $e1->{readonly}, $N, "readonly: +$N";
is $e2->{oom}, $e1->{oom}, 'oom unchanged';

# back to a master
is $t->redis('REPLICAOF', 'NO', 'ONE'), 'OK', 'REPLICAOF NO ONE';
@r = round('back');
is scalar(grep { ($_->{headers}{'x-dify-status'} // '') eq 'passed' } @r),
    $N, 'decided by Redis again';

$t->done;
done_testing;
