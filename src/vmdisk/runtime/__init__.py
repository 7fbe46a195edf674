"""Running what vmdisk built: start, stop, status, console, ip, ssh (issue 18).

state.py    the VM's state and the runtime.json each start leaves in the instance dir
qemu.py     a detached qemu: pidfile, QMP socket, console socket, forwarded ssh port
ssh.py      host keys from the console, known_hosts, the ssh command line
guests.py   the operations on one instance, for Host and the CLI
(libvirt/runtime.py is the libvirt half.)
"""
