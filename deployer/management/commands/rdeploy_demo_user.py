from typing import Any

from django.core.management.base import BaseCommand

from deployer.services.users import demo_user_ensure


class Command(BaseCommand):
    help = "Create the quick start's demo user (once) and print its credentials."

    def handle(self, *args: Any, **options: Any) -> None:
        user, password = demo_user_ensure()
        self.stdout.write(f"Demo user: {user.username} / password: {password}")
