/* The init of the guest the keel-vmm end-to-end tests boot: it says it
 * runs, writes keel-vmm's boot-timer through /dev/mem, then, when it has
 * them, reads and writes its virtio disk and makes a round trip over its
 * virtio network device, and reboots, which ends the VMM through its
 * i8042. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <termios.h>
#include <unistd.h>

#define BOOT_TIMER 0xd0000000UL
#define BOOT_TIMER_MAGIC 123

/* The test wrote a line at the start of the disk; the guest writes its
 * own at 4 KiB and flushes, which the test reads back on the host. */
static void disk(void) {
    int fd = open("/dev/vda", O_RDWR);
    if (fd < 0) {
        if (errno != ENOENT)
            perror("keel-vmm-guest: /dev/vda");
        return;
    }
    char buf[512] = {0};
    if (pread(fd, buf, sizeof buf - 1, 0) < 0)
        perror("keel-vmm-guest: read /dev/vda");
    char *nl = strchr(buf, '\n');
    if (nl)
        *nl = 0;
    printf("keel-vmm-guest: disk says: %s\n", buf);
    const char line[] = "written by the guest\n";
    if (pwrite(fd, line, sizeof line - 1, 4096) != sizeof line - 1 || fsync(fd) != 0)
        perror("keel-vmm-guest: write /dev/vda");
    else
        printf("keel-vmm-guest: disk written and flushed\n");
    close(fd);
}

static int set_addr(int s, unsigned long req, const char *ip) {
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "eth0");
    struct sockaddr_in *a = (struct sockaddr_in *)&ifr.ifr_addr;
    a->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &a->sin_addr);
    return ioctl(s, req, &ifr);
}

/* 10.99.0.2/24 on eth0, then a datagram to a port nobody listens on at
 * the host's end of the tap (10.99.0.1): the host's ICMP "port
 * unreachable" coming back proves frames went out and in. */
static void net(void) {
    if (if_nametoindex("eth0") == 0)
        return;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "eth0");
    if (set_addr(s, SIOCSIFADDR, "10.99.0.2") || set_addr(s, SIOCSIFNETMASK, "255.255.255.0") ||
        ioctl(s, SIOCGIFFLAGS, &ifr)) {
        perror("keel-vmm-guest: configure eth0");
        return;
    }
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr)) {
        perror("keel-vmm-guest: eth0 up");
        return;
    }
    struct sockaddr_in host = {.sin_family = AF_INET, .sin_port = htons(9)};
    inet_pton(AF_INET, "10.99.0.1", &host.sin_addr);
    struct timeval tv = {.tv_sec = 2};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&host, sizeof host)) {
        perror("keel-vmm-guest: connect");
        return;
    }
    for (int i = 0; i < 10; i++) {
        char c;
        send(s, "keel", 4, 0);
        if (recv(s, &c, 1, 0) < 0 && errno == ECONNREFUSED) {
            printf("keel-vmm-guest: net: the host answered (port unreachable)\n");
            return;
        }
    }
    printf("keel-vmm-guest: net: no answer from 10.99.0.1\n");
}

int main(void) {
    mkdir("/dev", 0755);
    if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL) != 0)
        perror("keel-vmm-guest: mount /dev");
    printf("keel-vmm-guest: init running\n");
    /* Out through the serial port before the boot-timer line keel-vmm
     * prints (both reach the same log). */
    fflush(stdout);
    tcdrain(1);
    int fd = open("/dev/mem", O_RDWR | O_SYNC);
    if (fd < 0) {
        perror("keel-vmm-guest: /dev/mem");
    } else {
        volatile unsigned char *p =
            mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, BOOT_TIMER);
        if (p == MAP_FAILED) {
            perror("keel-vmm-guest: mmap the boot timer");
        } else {
            *p = BOOT_TIMER_MAGIC;
            printf("keel-vmm-guest: boot timer written\n");
        }
    }
    disk();
    net();
    fflush(stdout);
    /* The console's output is still in the tty layer: let it reach the
     * serial port before the machine goes. */
    tcdrain(1);
    sync();
    reboot(RB_AUTOBOOT);
    return 1;
}
