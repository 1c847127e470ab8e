#!/usr/bin/perl
#
# The node's clock is the monotonic one (issue 12, item 7): with Redis
# down and "dify_status_redis_fallback local", a step of the wall clock
# neither stretches a rejection (a step back of an hour used to refuse
# the key for that hour) nor forgives one (a step forward used to admit
# at once).
#
# nginx runs under libfaketime (Debian's libfaketime package), its wall
# clock read from a file that the test rewrites (FAKETIME_TIMESTAMP_FILE,
# FAKETIME_NO_CACHE), its monotonic clock left alone
# (FAKETIME_DONT_FAKE_MONOTONIC).  That the step took effect is checked
# on nginx's Date header.  Skipped without libfaketime, and under
# valgrind.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use Time::Local qw(timegm);
use DifyTest;
use DifyLimit qw(fresh_key patch wait_for);

DifyTest::require_module();

my ($FAKETIME) = grep { -e } map { "/usr/lib/$_/faketime/libfaketime.so.1" }
    qw(x86_64-linux-gnu aarch64-linux-gnu i386-linux-gnu);
plan skip_all => 'libfaketime is not installed (apt-get install libfaketime)'
    unless $FAKETIME;
plan skip_all => 'not under valgrind' if DifyTest->valgrind;

my $t = DifyTest->new;
my $clock = $t->dir . '/faketime';

sub set_clock {
    open my $fh, '>', "$clock.new" or die "$clock: $!";
    print $fh "$_[0]\n";
    close $fh;
    rename "$clock.new", $clock or die "rename: $!";
}
set_clock('+0');

$t->start_redis;
$t->start_nginx(
    preload => $FAKETIME,
    env => { FAKETIME_TIMESTAMP_FILE => $clock, FAKETIME_NO_CACHE => 1,
             FAKETIME_DONT_FAKE_MONOTONIC => 1 },
    main => q{
        env FAKETIME_TIMESTAMP_FILE;
        env FAKETIME_NO_CACHE;
        env FAKETIME_DONT_FAKE_MONOTONIC;
    },
    http => q{
    dify_status_redis %%REDIS%% timeout=1s;
    dify_status_redis_fallback local;
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Dify-Status $dify_status always;
        location /v1/ {
            dify_status on;
            dify_status_limit rate=1r/s burst=1;
            proxy_pass http://upstream;
        }
    }
});

# the wall clock nginx reads, from its Date header, minus the real one
sub skew {
    my ($r) = @_;
    my $d = $r->{headers}{date} // return undef;
    my %mon = (Jan => 0, Feb => 1, Mar => 2, Apr => 3, May => 4, Jun => 5,
               Jul => 6, Aug => 7, Sep => 8, Oct => 9, Nov => 10, Dec => 11);
    $d =~ /^\w+, (\d\d) (\w{3}) (\d{4}) (\d\d):(\d\d):(\d\d) GMT$/ or return undef;
    return timegm($6, $5, $4, $1, $mon{$2}, $3) - time;
}

my $key = fresh_key('clock');
my $r;
for (1 .. 100) {
    $r = patch($t, $key);
    last if $r->{status} == 200 && ($r->{headers}{'x-dify-status'} // '') eq 'passed';
    sleep 0.05;
}
is $r->{headers}{'x-dify-status'}, 'passed', 'Redis decides first: the limit is known';
ok abs(skew($r)) < 5, 'the wall clock is not stepped yet';

$t->kill_redis;

$r = patch($t, $key);
is $r->{status}, 429, 'Redis down: the key is refused locally';
is $r->{headers}{'retry-after'}, 1, 'for a second';

# the wall clock goes back an hour
set_clock('-1h');
$r = patch($t, $key);
my $s = skew($r);
SKIP: {
    skip 'libfaketime did not step nginx\'s wall clock here', 4
        unless defined $s && $s < -3500;
    pass "nginx's wall clock is an hour back (Date header: $s s)";

    sleep 1.2;
    $r = patch($t, $key);
    is $r->{status}, 200, 'a second later the key passes: the step back '
        . 'did not stretch the rejection';
    is $r->{headers}{'x-dify-status'}, 'fallback_passed', 'decided locally';

    # and forward again by the hour: the wait is not forgiven
    set_clock('+0');
    $r = patch($t, $key);
    is $r->{status}, 429, 'a step forward does not forgive the wait';
}

$t->done;
done_testing;
